"""With no champion, serving answers with the named fallback ranker until one is promoted."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY
from serving_helpers import (
    TopicReader,
    fresh_group,
    make_request,
    send_requests,
    train_throwaway_model,
)
from test_consumer import ServingThread, feeds_by_id, warm_up

from feedrank import ranking
from feedrank.config import PathsConfig, Settings
from feedrank.feature_spec import model_features
from feedrank.tracking import champion_version, set_champion
from serving.feed_cache import open_feed_cache
from serving.scorer import FALLBACK_VERSION, NO_CHAMPION_RANKER, ModelSlot, Scorer

pytestmark = pytest.mark.integration


def _no_champion_count() -> float:
    value = REGISTRY.get_sample_value("feedrank_serving_degraded_total", {"reason": "no_champion"})
    return value or 0.0


def test_no_champion_serves_fallback_then_switches_to_promoted_model(
    kafka: Settings, serve_settings: Settings, hydrator_factory, producer, tmp_path
) -> None:
    # Its own registry (no champion); features come from the serving tests' Feast world.
    hydrator = hydrator_factory(serve_settings)
    settings = fresh_group(
        serve_settings.model_copy(
            update={"kafka": kafka.kafka, "paths": PathsConfig(home=tmp_path)}
        )
    )
    assert champion_version(settings) is None
    reader = TopicReader(settings, "ranked_feeds")
    scorer = Scorer(settings, ModelSlot(None), hydrator, open_feed_cache(settings))
    before = _no_champion_count()
    server = ServingThread(settings, scorer)
    try:
        warm_up(settings, producer, reader)  # joined and assigned: no request late on arrival
        before = _no_champion_count()
        first = [make_request(1 + i, range(30 * i, 30 * i + 30)) for i in range(5)]
        send_requests(producer, first)
        ids = {r.request_id for r in first}
        fallback = feeds_by_id(
            reader.read(len(ids), 90, accept=lambda v: json.loads(v)["request_id"] in ids)
        )
        counted = _no_champion_count() - before
        version = train_throwaway_model(settings, seed=3, version="after-refusal-v1")
        set_champion(settings, version)
        # The watcher looks at the pointer between requests (at most every second) and loads
        # in the background: the requests meanwhile still get the fallback.
        probe_versions = []
        for i in range(40):
            probe = make_request(300 + i, range(1500 + 10 * i, 1510 + 10 * i))
            send_requests(producer, [probe])
            (value,) = reader.read(1, 30, accept=lambda v, rid=probe.request_id: rid.encode() in v)
            probe_versions.append(json.loads(value)["model_version"])
            if probe_versions[-1] == version:
                break
            time.sleep(0.3)
        later = [make_request(50 + i, range(900 + 30 * i, 930 + 30 * i)) for i in range(5)]
        send_requests(producer, later)
        later_ids = {r.request_id for r in later}
        switched = feeds_by_id(
            reader.read(
                len(later_ids), 90, accept=lambda v: json.loads(v)["request_id"] in later_ids
            )
        )
    finally:
        stats = server.stop()
        reader.close()
        scorer.close()
    assert set(fallback) == ids and stats.dead_lettered == 0
    for request in first:
        (feed,) = fallback[request.request_id]
        if feed.model_version == FALLBACK_VERSION:  # late on arrival: not a ranker's answer
            continue
        assert feed.model_version == NO_CHAMPION_RANKER and feed.degraded
        assert len(feed.items) == 30  # every candidate answered, none dropped
        # The old system's order: newest first, then the usual author-diversity discount.
        ids = request.candidate_tweet_ids
        created = hydrator.hydrate(request.user_id, ids, 0.0, request.device)
        created = created[:, model_features().index("tweet_created_ts")].astype(np.float64)
        order, _ = ranking.rank(
            np.where(np.isnan(created), -np.inf, created),
            np.asarray(hydrator.author_ids(ids)),
            settings.ranking.author_diversity_floor,
            settings.ranking.top_k,
        )
        assert [i.tweet_id for i in feed.items] == [ids[k] for k in order]
    assert counted == sum(
        f.model_version == NO_CHAMPION_RANKER for copies in fallback.values() for f in copies
    )
    assert counted > 0
    assert probe_versions[-1] == version, probe_versions
    assert set(switched) == later_ids
    versions = {f.model_version for copies in switched.values() for f in copies}
    assert versions <= {version, FALLBACK_VERSION} and version in versions
    assert scorer.models.version == version
