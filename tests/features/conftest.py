"""Feature-store fixtures: a Feast store over feature tables generated from the spec.

Until the Spark feature jobs' output is wired in here, the tables come from
``write_synthetic_feature_tables`` (driven by ``feature_spec``), in a run folder of their own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedrank.config import FeastConfig, PathsConfig, Settings

START = dt.date(2026, 11, 1)
DAYS = 2
# Not on any snapshot (midnight) or stream tick (full hour) boundary.
AS_OF = dt.datetime(2026, 11, 2, 13, 17, 11, tzinfo=dt.UTC)
SIZES = {"users": 60, "authors": 15, "tweets": 400, "topics": 6}


def materialize_as_of(settings: Settings, as_of: dt.datetime) -> None:
    """Online store = the values valid at ``as_of``: each view's window is its TTL."""
    from feedrank import feature_spec as spec
    from feedrank.featurestore import materialize

    by_ttl: dict[int, list[str]] = {}
    for view in spec.VIEWS.values():
        by_ttl.setdefault(view.ttl_days, []).append(view.name)
    for ttl_days, names in sorted(by_ttl.items()):
        materialize(settings, start=as_of - dt.timedelta(days=ttl_days), end=as_of, views=names)


@pytest.fixture(scope="session")
def feature_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding the synthetic feature tables."""
    from feedrank.featurestore import write_synthetic_feature_tables

    home = tmp_path_factory.mktemp("feast-home")
    write_synthetic_feature_tables(
        home / "features", start=START, days=DAYS, stream_step_minutes=60, seed=11, **SIZES
    )
    return home


@pytest.fixture(scope="session")
def sqlite_store(settings: Settings, feature_home: Path) -> Iterator[Settings]:
    """Local profile (SQLite online, file offline), applied and materialized as of AS_OF."""
    from feedrank.featurestore import apply_repo

    local = settings.model_copy(
        update={"paths": PathsConfig(home=feature_home), "feast": FeastConfig()}
    )
    apply_repo(local)
    materialize_as_of(local, AS_OF)
    yield local


@pytest.fixture(scope="session")
def redis_store(redis_server: Settings, feature_home: Path) -> Iterator[Settings]:
    """Redis profile on the session's redis-server, its own Feast project, as of AS_OF."""
    import redis

    from feedrank.featurestore import apply_repo

    project = "feedrank_tests_features"
    client = redis.Redis(host=redis_server.redis.host, port=redis_server.redis.port)
    for key in client.scan_iter(match=b"*" + project.encode()):
        client.delete(key)
    remote = redis_server.model_copy(
        update={
            "paths": PathsConfig(home=feature_home),
            "feast": FeastConfig(online_store="redis", project=project),
        }
    )
    apply_repo(remote)
    materialize_as_of(remote, AS_OF)
    yield remote
