"""Streaming features: window counters (unit) and the engagements -> push path (real broker)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from feedrank import feature_spec as spec
from feedrank.config import FeastConfig, PathsConfig, Settings
from feedrank.schemas import Engagement, encode
from jobs.stream_features import WindowCounters, run_stream_features

T0 = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC)


def _engagement(tweet_id: int, user_id: int, at: dt.datetime, head: str = "like") -> Engagement:
    return Engagement(
        request_id="r1", user_id=user_id, tweet_id=tweet_id, author_id=1, head=head, engaged_at=at
    )


@pytest.mark.unit
def test_window_counters_count_positive_heads_and_slide() -> None:
    counters = WindowCounters()
    assert counters.add(_engagement(7, 1, T0), partition=0, offset=10)
    assert counters.add(_engagement(7, 2, T0 + dt.timedelta(minutes=50)), partition=0, offset=11)
    assert not counters.add(_engagement(7, 2, T0, head="negative"), partition=0, offset=12)
    rows = counters.changed_rows()
    tweet = rows["tweet_realtime"].set_index("tweet_id").loc[7]
    assert (tweet["tweet_engagements_30m"], tweet["tweet_engagements_1h"]) == (1, 2)
    assert set(rows["user_realtime"]["user_id"]) == {1, 2}
    assert counters.changed_rows() == {}  # nothing changed since
    assert counters.replay_offsets() == {0: 10}
    # 70 minutes later the first like has left both windows: the tweet is re-pushed lower.
    counters.add(_engagement(8, 3, T0 + dt.timedelta(minutes=70)), partition=1, offset=5)
    rows = counters.changed_rows()
    tweet = rows["tweet_realtime"].set_index("tweet_id").loc[7]
    assert (tweet["tweet_engagements_30m"], tweet["tweet_engagements_1h"]) == (1, 1)
    user1 = rows["user_realtime"].set_index("user_id").loc[1]
    assert user1["user_engagements_1h"] == 0
    assert counters.replay_offsets() == {0: 11, 1: 5}
    assert (rows["tweet_realtime"]["event_timestamp"] == T0 + dt.timedelta(minutes=70)).all()


@pytest.mark.integration
def test_pushed_engagement_is_visible_online_within_a_second(
    kafka: Settings, tmp_path: Path
) -> None:
    """engagements topic -> stream-features -> Feast push -> get_online_features."""
    from kafka import KafkaProducer

    from feedrank.featurestore import apply_repo, feature_store

    local = kafka.model_copy(update={"paths": PathsConfig(home=tmp_path), "feast": FeastConfig()})
    apply_repo(local)
    store = feature_store(local)
    producer = KafkaProducer(bootstrap_servers=kafka.kafka.bootstrap_servers, acks="all")
    base_id = 10**12 + int(uuid.uuid4().int % 10**9) * 10
    stop = threading.Event()
    result = {}

    def consume() -> None:
        result["stats"] = run_stream_features(
            local,
            store=feature_store(local),
            group_id=f"test-{uuid.uuid4().hex}",
            new_group_from_latest=True,
            poll_timeout_ms=50,
            stop=stop,
        )

    def online_count(tweet_id: int) -> int | None:
        return store.get_online_features(
            features=["tweet_realtime:tweet_engagements_1h"], entity_rows=[{"tweet_id": tweet_id}]
        ).to_dict()["tweet_engagements_1h"][0]

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        # Warm-up: repeat until the consumer has joined its group and pushed once.
        deadline = time.monotonic() + 90
        while online_count(base_id) is None:
            assert time.monotonic() < deadline, "stream-features never pushed the warm-up"
            producer.send("engagements", encode(_engagement(base_id, 5, T0)))
            producer.flush()
            time.sleep(0.5)
        producer.send("engagements", b"{not json")  # dead-lettered, not fatal
        target = base_id + 1
        producer.send("engagements", encode(_engagement(target, 5, T0 + dt.timedelta(seconds=1))))
        producer.flush()
        sent = time.monotonic()
        while online_count(target) is None and time.monotonic() - sent < 1.0:
            time.sleep(0.02)
        assert online_count(target) == 1, "pushed engagement not online within 1 s"
        from serving.hydration import FeatureHydrator

        column = spec.model_features().index("tweet_engagements_1h")
        fast = FeatureHydrator(local, store=store).hydrate(5, [target, base_id + 2], 0.0, "web")
        assert fast[0, column] == 1 and np.isnan(fast[1, column])  # the fast path sees it too
    finally:
        stop.set()
        thread.join(timeout=30)
        producer.close()
    stats = result["stats"]
    assert stats.dead_lettered >= 1 and stats.counted >= 2 and stats.commits >= 2
