"""Short versions of ``make chaos``'s store faults (serving/chaos_bench.py): Redis stopped
under the scorer, and a model version written on a full disk (a real size-capped tmpfs; ENOSPC
injected where mount is refused)."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from serving_helpers import TableHydrator, make_request

from feedrank import services
from feedrank.config import PathsConfig, Settings
from feedrank.errors import FeedrankError
from feedrank.model_files import load_model, save_model
from serving.feed_cache import open_feed_cache
from serving.scorer import FALLBACK_VERSION, ModelSlot, Scorer

pytestmark = pytest.mark.integration


class RedisHydrator(TableHydrator):
    """The table's features, read only when the Redis online store answers (a PING per
    request): hydration fails exactly when the real server is down."""

    def __init__(self, settings: Settings) -> None:
        import redis

        from feedrank.config import redis_client_kwargs, redis_serving_options

        super().__init__()
        # A serve process's client options, as serving.hydration's reader has them.
        self.client = redis.Redis(
            **redis_client_kwargs(settings), **redis_serving_options(settings)
        )

    def hydrate(self, user_id: int, tweet_ids: list[int], request_ts: float, device: str):
        self.client.ping()
        return super().hydrate(user_id, tweet_ids, request_ts, device)


def _errors(dependency: str) -> float:
    sample = REGISTRY.get_sample_value(
        "feedrank_serving_dependency_errors_total", {"dependency": dependency}
    )
    return sample or 0.0


@pytest.fixture
def own_redis(serve_settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A redis-server of this test's own (another port, another folder): it is stopped here."""
    settings = serve_settings.model_copy(
        update={
            "paths": serve_settings.paths.model_copy(update={"home": tmp_path}),
            "redis": serve_settings.redis.model_copy(
                update={
                    "port": serve_settings.redis.port + 11,
                    "password_file": tmp_path / "secrets" / "redis.password",
                }
            ),
            "feast": serve_settings.feast.model_copy(update={"online_store": "redis"}),
        }
    )
    services.redis_up(settings)
    yield settings
    services.redis_down(settings)


def test_scorer_answers_degraded_while_redis_is_stopped_and_recovers(
    own_redis: Settings, serve_settings: Settings, champion: str
) -> None:
    settings = own_redis
    model = load_model(champion, serve_settings)
    cache = open_feed_cache(settings)  # Redis-backed: the same server as the features
    scorer = Scorer(settings, ModelSlot(model), RedisHydrator(settings), cache)
    tweets = list(range(200, 260))
    try:
        before = scorer.score(make_request(5, tweets))
        assert not before.feed.degraded and before.feed.model_version == model.version
        cache.put_many([(before.feed, before.payload)])
        errors = _errors("online_store"), _errors("feed_cache")

        services.redis_down(settings)
        during = scorer.score(make_request(6, tweets))
        cache.put_many([(during.feed, during.payload)])  # dropped, not raised
        replay = scorer.score(make_request(5, tweets, request_id=before.feed.request_id))
        assert during.feed.degraded and during.feed.model_version == FALLBACK_VERSION
        assert [i.tweet_id for i in during.feed.items] == tweets[: settings.ranking.top_k]
        assert not replay.replayed and replay.feed.degraded  # no cache: recomputed, answered
        assert _errors("online_store") >= errors[0] + 2
        assert _errors("feed_cache") >= errors[1] + 3

        services.redis_up(settings)
        after = scorer.score(make_request(7, tweets))
        assert not after.feed.degraded and after.feed.model_version == model.version
        again = scorer.score(make_request(5, tweets, request_id=before.feed.request_id))
        assert again.replayed and again.payload == before.payload  # the cache is back
    finally:
        scorer.close()
        cache.close()


def _no_space(self: Path, *args: object, **kwargs: object) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))


def test_a_model_version_written_on_a_full_disk_is_refused_cleanly(
    serve_settings: Settings, champion: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(champion, serve_settings)
    home = tmp_path / "full"
    models = PathsConfig(home=home).models
    models.mkdir(parents=True)  # room for two of the five ~10 KB boosters
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(models)],
        capture_output=True,
        text=True,
        check=False,
    )
    mounted = mount.returncode == 0
    full = serve_settings.model_copy(update={"paths": PathsConfig(home=home)})
    version = f"full-{uuid.uuid4().hex[:6]}"
    try:
        with monkeypatch.context() as patch:
            if not mounted:
                # No size-capped filesystem here (mount needs root): the same fault injected,
                # the disk filling after the boosters were written.
                patch.setattr(Path, "write_text", _no_space)
            with pytest.raises(FeedrankError, match=f"model version {version} not written") as info:
                save_model(
                    full,
                    boosters=model.boosters,
                    light_ranker=model.light,
                    keep_rates=model.keep_rates,
                    training_data=model.metadata["training_data"],
                    version=version,
                )
        assert "\n" not in str(info.value)
        assert list(models.iterdir()) == []  # no partial version, no temp folder
    finally:
        if mounted:
            subprocess.run(["umount", str(models)], check=True)
    # The champion was never touched: it still loads and serves.
    assert load_model(champion, serve_settings).version == champion
