"""Streaming features: window counters (unit) and the engagements -> push path (real broker)."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feedrank import feature_spec as spec
from feedrank.config import FeastConfig, PathsConfig, Settings
from feedrank.schemas import Engagement, encode
from jobs.stream_features import (
    StreamStats,
    WindowCounters,
    _start_points,
    run_stream_features,
)

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
    # User 1 has nothing left in the hour: a tombstone (null), as in the offline table.
    user1 = rows["user_realtime"].set_index("user_id").loc[1]
    assert user1["user_engagements_1h"] is pd.NA
    assert counters.replay_offsets() == {0: 11, 1: 5}
    assert (rows["tweet_realtime"]["event_timestamp"] == T0 + dt.timedelta(minutes=70)).all()


@pytest.mark.unit
def test_silent_stream_counters_decay_and_leave_when_the_stream_time_advances() -> None:
    """No event after T0 + 50 min: advancing the stream time alone lowers, then tombstones."""
    counters = WindowCounters()
    counters.add(_engagement(7, 1, T0), partition=0, offset=1)
    counters.add(_engagement(7, 1, T0 + dt.timedelta(minutes=50)), partition=0, offset=2)
    counters.changed_rows()
    counters.advance((T0 + dt.timedelta(minutes=40)).timestamp())  # never moves back
    assert counters.changed_rows() == {}
    counters.advance((T0 + dt.timedelta(minutes=90)).timestamp())
    tweet = counters.changed_rows()["tweet_realtime"].set_index("tweet_id").loc[7]
    assert (tweet["tweet_engagements_30m"], tweet["tweet_engagements_1h"]) == (0, 1)
    counters.advance((T0 + dt.timedelta(minutes=111)).timestamp())
    rows = counters.changed_rows()
    tweet = rows["tweet_realtime"].set_index("tweet_id").loc[7]
    assert tweet[["tweet_engagements_30m", "tweet_engagements_1h"]].isna().all()
    assert rows["user_realtime"].set_index("user_id").loc[1, "user_engagements_1h"] is pd.NA
    assert tweet["event_timestamp"] == T0 + dt.timedelta(minutes=111)  # the stream time
    assert counters.replay_offsets() == {}  # nothing left to replay after a restart


@pytest.mark.unit
def test_start_points_never_skip_a_partition_of_an_existing_group() -> None:
    """Committed partitions replay from their metadata; an uncommitted one starts at its
    beginning unless the whole group is new and asked to start at the end."""
    from kafka.structs import OffsetAndMetadata, TopicPartition

    p0, p1 = TopicPartition("engagements", 0), TopicPartition("engagements", 1)

    class Consumer:  # the four calls _start_points makes
        def __init__(self, committed: dict[TopicPartition, OffsetAndMetadata]) -> None:
            self.done = committed

        def committed(self, tp: TopicPartition, metadata: bool) -> OffsetAndMetadata | None:
            return self.done.get(tp)

        def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            return dict.fromkeys(tps, 5)

        def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            return dict.fromkeys(tps, 100)

    assert _start_points(Consumer({}), [p0, p1], at_end_if_new=True) == {
        p0: (100, 100),
        p1: (100, 100),
    }
    assert _start_points(Consumer({}), [p0, p1], at_end_if_new=False) == {p0: (5, 5), p1: (5, 5)}
    existing = Consumer({p0: OffsetAndMetadata(50, "40", -1)})
    assert _start_points(existing, [p0, p1], at_end_if_new=True) == {p0: (40, 50), p1: (5, 5)}
    no_metadata = Consumer({p0: OffsetAndMetadata(50, "", -1)})
    assert _start_points(no_metadata, [p0], at_end_if_new=True) == {p0: (50, 50)}


class _StreamJob:
    """``run_stream_features`` in a thread, in a consumer group of the test's choosing."""

    def __init__(self, settings: Settings, group_id: str) -> None:
        from feedrank.featurestore import feature_store

        self.stop = threading.Event()
        self.stats: StreamStats | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.stats = run_stream_features(
                    settings,
                    store=feature_store(settings),
                    group_id=group_id,
                    new_group_from_latest=True,
                    stop=self.stop,
                )
            except BaseException as exc:  # re-raised by wait_for / finish in the test thread
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait_for(
        self,
        condition: Callable[[], bool],
        what: str,
        timeout_s: float = 60,
        state: Callable[[], object] = lambda: "-",
    ) -> None:
        """Poll ``condition`` until it holds; fail on the deadline (showing ``state()``) or
        as soon as the job died."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.error is not None:
                raise AssertionError(f"stream-features failed while waiting for {what}") from (
                    self.error
                )
            assert self.thread.is_alive(), f"stream-features ended before {what}"
            assert time.monotonic() < deadline, f"{what} not within {timeout_s:.0f} s: {state()}"
            time.sleep(0.05)

    def finish(self) -> StreamStats:
        """Stop the job and return its stats (it must stop within 30 s)."""
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "stream-features did not stop"
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats


@contextlib.contextmanager
def _stream_job(settings: Settings, group_id: str) -> Iterator[_StreamJob]:
    job = _StreamJob(settings, group_id)
    try:
        yield job
    finally:
        job.stop.set()
        job.thread.join(timeout=30)


def _local_store(kafka: Settings, tmp_path: Path) -> tuple[Settings, Any]:
    """Settings with a local Feast repo of the test's own (applied), and its store."""
    from feedrank.featurestore import apply_repo, feature_store

    local = kafka.model_copy(update={"paths": PathsConfig(home=tmp_path), "feast": FeastConfig()})
    apply_repo(local)
    return local, feature_store(local)


def _unique_id(base: int) -> int:
    return base + int(uuid.uuid4().int % 10**9) * 10


@pytest.mark.integration
def test_pushed_engagement_is_visible_online_within_a_second(
    kafka: Settings, tmp_path: Path
) -> None:
    """engagements topic -> stream-features -> Feast push -> get_online_features."""
    from kafka import KafkaProducer

    local, store = _local_store(kafka, tmp_path)
    producer = KafkaProducer(bootstrap_servers=kafka.kafka.bootstrap_servers, acks="all")
    base_id = _unique_id(10**12)

    def online_count(tweet_id: int) -> int | None:
        return store.get_online_features(
            features=["tweet_realtime:tweet_engagements_1h"], entity_rows=[{"tweet_id": tweet_id}]
        ).to_dict()["tweet_engagements_1h"][0]

    def warmed_up() -> bool:
        if online_count(base_id) is not None:
            return True
        producer.send("engagements", encode(_engagement(base_id, 5, T0)))
        producer.flush()
        time.sleep(0.5)
        return False

    try:
        with _stream_job(local, f"test-{uuid.uuid4().hex}") as job:
            # Warm-up: repeat until the job has its start offsets and pushed once.
            job.wait_for(warmed_up, "the warm-up push")
            producer.send("engagements", b"{not json")  # dead-lettered, not fatal
            target = base_id + 1
            at = T0 + dt.timedelta(seconds=1)
            producer.send("engagements", encode(_engagement(target, 5, at)))
            producer.flush()
            sent = time.monotonic()
            while online_count(target) is None and time.monotonic() - sent < 1.0:
                time.sleep(0.02)
            assert online_count(target) == 1, "pushed engagement not online within 1 s"
            from serving.hydration import FeatureHydrator

            column = spec.model_features().index("tweet_engagements_1h")
            hydrator = FeatureHydrator(local, store=store)
            fast = hydrator.hydrate(5, [target, base_id + 2], 0.0, "web")
            assert fast[0, column] == 1 and np.isnan(fast[1, column])  # the fast path sees it
            stats = job.finish()
    finally:
        producer.close()
    assert stats.dead_lettered >= 1 and stats.counted >= 2 and stats.commits >= 2


@pytest.mark.integration
def test_silent_tweet_counters_decay_and_expire_online(kafka: Settings, tmp_path: Path) -> None:
    """No engagement after F: the job's stream time follows the wall clock once idle, so the
    tweet whose likes were 29m50s and 59m50s old at F decays, then leaves the view, online
    (Feast and the serving fast path), as the offline table's counters do."""
    from kafka import KafkaProducer

    from feedrank.config import StreamFeaturesConfig
    from serving.hydration import FeatureHydrator

    local, store = _local_store(kafka, tmp_path)
    local = local.model_copy(
        update={"stream_features": StreamFeaturesConfig(idle_advance_after_s=1.0)}
    )
    producer = KafkaProducer(bootstrap_servers=kafka.kafka.bootstrap_servers, acks="all")
    fading, silent = _unique_id(3 * 10**12), _unique_id(4 * 10**12)
    last = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)  # after any other test's events
    names = ["tweet_engagements_30m", "tweet_engagements_1h"]

    def online(tweet_id: int) -> tuple[int | None, ...]:
        got = store.get_online_features(
            features=[f"tweet_realtime:{n}" for n in names], entity_rows=[{"tweet_id": tweet_id}]
        ).to_dict()
        return tuple(got[n][0] for n in names)

    def send(tweet_id: int, at: dt.datetime) -> None:
        producer.send("engagements", encode(_engagement(tweet_id, 6, at)))
        producer.flush()

    def warmed_up() -> bool:
        if online(silent)[1] is not None:
            return True
        send(silent, last - dt.timedelta(seconds=3590))
        time.sleep(0.5)
        return False

    try:
        with _stream_job(local, f"test-{uuid.uuid4().hex}") as job:
            job.wait_for(warmed_up, "the warm-up push")
            send(fading, last - dt.timedelta(seconds=1790))
            send(fading, last)
            job.wait_for(lambda: online(fading)[1] == 2, "both likes", state=lambda: online(fading))
            # Silent from here on: within seconds the first like leaves the 30 minutes and
            # the silent tweet's last like its hour (a tombstone: missing, not its last value).
            job.wait_for(
                lambda: online(fading)[0] == 1 and online(silent) == (None, None),
                "the idle stream time to expire the old likes",
                state=lambda: (online(fading), online(silent)),
            )
            assert online(fading) == (1, 2)
            columns = [spec.model_features().index(n) for n in names]
            fast = FeatureHydrator(local, store=store).hydrate(6, [fading, silent], 0.0, "web")
            assert fast[0, columns].tolist() == [1.0, 2.0]
            assert np.isnan(fast[1, columns]).all()
            job.finish()
    finally:
        producer.close()


@pytest.mark.integration
def test_restarted_stream_job_rebuilds_its_windows_and_counts_new_engagements(
    kafka: Settings, tmp_path: Path
) -> None:
    """Two likes, stop; one like while the job is down, one after its restart.

    The restarted job starts with empty counters: only a replay of the windows gives the
    old likes' counts. The like sent while it was down lands on a partition where the first
    run (a new group, started at the end of the topic) consumed nothing: the case that an
    offset reset to "latest" used to skip. The like after the restart is counted and online.
    """
    from kafka import KafkaProducer

    local, store = _local_store(kafka, tmp_path)
    producer = KafkaProducer(bootstrap_servers=kafka.kafka.bootstrap_servers, acks="all")
    group = f"test-restart-{uuid.uuid4().hex}"
    tweet, user = _unique_id(2 * 10**12), _unique_id(3 * 10**12)
    last = kafka.kafka.topics["engagements"].partitions - 1

    def send(tweet_id: int, user_id: int, minute: int, partition: int) -> None:
        at = T0 + dt.timedelta(minutes=minute)
        producer.send(
            "engagements", encode(_engagement(tweet_id, user_id, at)), partition=partition
        )
        producer.flush()

    def online() -> tuple[int | None, int | None, int | None]:
        """(tweet 30 min, tweet 1 h, user 1 h) counts of the test's tweet and user."""
        row = store.get_online_features(
            features=[
                "tweet_realtime:tweet_engagements_30m",
                "tweet_realtime:tweet_engagements_1h",
                "user_realtime:user_engagements_1h",
            ],
            entity_rows=[{"tweet_id": tweet, "user_id": user}],
        ).to_dict()
        return (
            row["tweet_engagements_30m"][0],
            row["tweet_engagements_1h"][0],
            row["user_engagements_1h"][0],
        )

    def warmed_up() -> bool:  # another tweet and user, so the counts under test stay exact
        ok = store.get_online_features(
            features=["tweet_realtime:tweet_engagements_1h"], entity_rows=[{"tweet_id": tweet + 1}]
        ).to_dict()["tweet_engagements_1h"][0]
        if ok is None:
            send(tweet + 1, user + 1, 0, partition=0)
            time.sleep(0.5)
        return ok is not None

    try:
        with _stream_job(local, group) as job:  # a new group: starts at the end of the topic
            job.wait_for(warmed_up, "the warm-up push")
            send(tweet, user, 0, partition=0)
            send(tweet, user, 40, partition=min(1, last))
            # Stream time 12:40: the 12:00 like is in the hour only.
            job.wait_for(lambda: online() == (1, 2, 2), "the first run's counts", state=online)
            first = job.finish()
        assert first.consumed == first.counted >= 3 and first.replayed == 0

        send(tweet, user, 45, partition=last)  # while the job is down
        with _stream_job(local, group) as job:
            # (a) windows rebuilt: 12:00 and 12:40 replayed, 12:45 new; stream time 12:45.
            job.wait_for(
                lambda: online() == (2, 3, 3),
                "the rebuilt windows + the like sent while down",
                state=online,
            )
            # (b) a like after the restart is counted and online; stream time 12:50.
            send(tweet, user, 50, partition=0)
            job.wait_for(lambda: online() == (3, 4, 4), "the like after the restart", state=online)
            second = job.finish()
    finally:
        producer.close()
    assert second.replayed >= 2  # the first run's likes (and warm-ups), not counted again
    assert (second.consumed, second.counted, second.dead_lettered) == (2, 2, 0)
    assert second.commits >= 2 and second.lag == 0


def _exported(settings: Settings, user_id: int) -> dict[str, float]:
    """The stream-features metrics of this process (prometheus_client's default registry)."""
    from prometheus_client import REGISTRY

    from feedrank.experiment_design import assign_arm

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    arm = assign_arm(user_id, settings.experiment.arms, settings.experiment.salt)
    return {
        outcome: value("feedrank_stream_features_records_total", outcome=outcome)
        for outcome in ("counted", "dead_lettered")
    } | {
        "likes": value("feedrank_stream_features_engagements_total", arm=arm, head="like"),
        "last_push": value("feedrank_stream_features_last_push_timestamp_seconds"),
    }


@pytest.mark.integration
def test_hostile_corpus_is_dead_lettered_and_good_engagements_counted(
    kafka: Settings, tmp_path: Path
) -> None:
    """A generated corpus of hostile values and keys between good engagements: each hostile
    record reaches engagements.dlq once with its partition and offset, each good one is
    counted once, and the job ends normally."""
    from hostile_corpus import generate, hostile_records
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from feedrank.schemas import DeadLetter

    local, store = _local_store(kafka, tmp_path)
    group = f"test-hostile-{uuid.uuid4().hex}"
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    try:  # the group starts at the current end: only this test's records are new to it
        parts = [
            TopicPartition("engagements", p) for p in consumer.partitions_for_topic("engagements")
        ]
        consumer.assign(parts)
        consumer.commit(
            {tp: OffsetAndMetadata(o, "", -1) for tp, o in consumer.end_offsets(parts).items()}
        )
    finally:
        consumer.close(autocommit=False)
    dlq = KafkaConsumer(bootstrap_servers=kafka.kafka.bootstrap_servers, enable_auto_commit=False)
    dlq_parts = [
        TopicPartition("engagements.dlq", p) for p in dlq.partitions_for_topic("engagements.dlq")
    ]
    dlq.assign(dlq_parts)
    for tp, offset in dlq.end_offsets(dlq_parts).items():
        dlq.seek(tp, offset)
    producer = KafkaProducer(bootstrap_servers=kafka.kafka.bootstrap_servers, acks="all")
    base = _unique_id(4 * 10**12)
    hostile = set()
    corpus = generate(hostile_records("engagements"), 60, run_seed=31)
    try:
        for i, (value, key) in enumerate(corpus):
            producer.send("engagements", encode(_engagement(base + i, 5, T0)), key=key)
            meta = producer.send("engagements", value, key=key).get(60)
            hostile.add((meta.partition, meta.offset))
        producer.flush()
    finally:
        producer.close()
    before = _exported(local, user_id=5)
    stats = run_stream_features(
        local, store=store, group_id=group, max_messages=2 * len(corpus), idle_timeout_s=20
    )
    after = _exported(local, user_id=5)
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + 60
    try:
        while len(letters) < len(hostile) and time.monotonic() < deadline:
            for records in dlq.poll(timeout_ms=200).values():
                letters += [DeadLetter.model_validate_json(r.value) for r in records]
    finally:
        dlq.close(autocommit=False)
    assert (stats.consumed, stats.counted, stats.dead_lettered) == (
        2 * len(corpus),
        len(corpus),
        len(hostile),
    )
    assert Counter((d.partition, d.offset) for d in letters) == Counter(dict.fromkeys(hostile, 1))
    assert all(d.source == "engagements" and d.reason for d in letters)
    # /metrics of stream-features says the same: the good engagements are user 5's likes,
    # counted under user 5's experiment arm.
    assert after["counted"] - before["counted"] == len(corpus)
    assert after["dead_lettered"] - before["dead_lettered"] == len(hostile)
    assert after["likes"] - before["likes"] == len(corpus)
    assert after["last_push"] > 1.7e9
