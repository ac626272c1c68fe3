"""Streaming features: engagements topic -> windowed counters -> Feast push.

Long because: the window counters, the consumer loop with its dead letters and commits, and
the stream metrics of one job.

The pure part is :class:`WindowCounters` (event-time sliding windows: a tweet's positive
engagements in the last 30 minutes and hour, a user's in the last hour; positive heads are
like, reply, retweet and click). :func:`run_stream_features` is the thin Kafka shell:

* **One process per deployment.** The job assigns itself every partition of the topic
  (``assign``, no group membership: no joins, rebalances or listeners); the consumer group
  only stores its committed offsets. Partitions added to the topic later are picked up.
* **At-least-once.** Offsets are committed only after the counters changed by a poll batch
  have been pushed (``FeatureStore.push(..., to=PushMode.ONLINE)``).
* **Restart-safe.** Each commit stores, as offset metadata, the oldest offset of the
  partition whose event still lies in a window. A started job seeks every partition back to
  it and replays up to the committed offset before it pushes anything, so its first push has
  complete windows; re-pushing a counter for the same stream time writes the same value
  (idempotent). A partition the group never committed is read from its beginning (nothing
  in it was counted), except in a brand-new group with ``new_group_from_latest``, which
  starts at the end; the start points are committed at once, so a restart resumes there.
* **Event time.** A counter's window ends at the stream time: the latest ``engaged_at`` seen.
  Entities whose events slide out of the window are re-pushed with their lower counts; when
  every count of an entity is zero, with null counts (a tombstone: the entity leaves the
  view, as in the offline table of :func:`jobs.features.stream_counters`, so a quiet entity
  is missing online as it is in the training data, however long ago it went quiet).
* **A silent stream.** Event time only moves with events, so when none arrive the counters
  would keep their last values online (and Feast serves a pushed value however old), while
  offline they decay on the clock. After ``stream_features.idle_advance_after_s`` without a
  message, the stream time advances by the wall-clock time elapsed since the last one
  (:meth:`WindowCounters.advance`): counters decay and leave the view as the offline table's
  do. A restarted job replays in event time, so until it is idle again it serves the counts
  at its last event.
* **Bad records** (any bytes: :func:`~feedrank.schemas.decode` is total) go to
  ``engagements.dlq`` as a :class:`~feedrank.schemas.DeadLetter` with the reason and their
  partition/offset, and are committed past (never lost, never fatal; not re-sent when
  replayed).
* **Lag** (end offset − position, summed over partitions) is logged after every batch and
  reported in :class:`StreamStats`.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from prometheus_client import Counter, Gauge, Histogram

from feedrank import feature_spec as spec
from feedrank.config import (
    GROUP_POLL_TIMEOUT_MS,
    POSITIVE_HEADS,
    STREAM_FEATURES_GROUP,
    Settings,
    Topics,
    get_settings,
)
from feedrank.errors import FeedrankError
from feedrank.experiment_design import assign_arm
from feedrank.schemas import DeadLetter, Engagement, decode_record

log = logging.getLogger(__name__)

TOPIC = Topics.ENGAGEMENTS
DLQ_TOPIC = Topics.dlq(TOPIC)
GROUP_ID = STREAM_FEATURES_GROUP

# /metrics of `feedrank stream-features` (observability.stream_features_port).
CONSUMED = Counter(
    "feedrank_stream_features_records_total",
    "Engagement records read, by outcome (counted, dead_lettered, other: duplicates, late).",
    ["outcome"],
)
ENGAGEMENTS = Counter(
    "feedrank_stream_features_engagements_total",
    "Engagements counted, by head and by the experiment arm of the user (assign_arm).",
    ["arm", "head"],
)
PUSHED_ROWS = Counter(
    "feedrank_stream_features_pushed_rows_total", "Counter rows pushed to the online store."
)
PUSH_SECONDS = Histogram(
    "feedrank_stream_features_push_seconds",
    "Time of one push-and-commit of the changed counters.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LAST_PUSH = Gauge(
    "feedrank_stream_features_last_push_timestamp_seconds",
    "When the changed counters were last pushed and their offsets committed.",
)
LAG = Gauge(
    "feedrank_stream_features_consumer_lag_messages",
    "Engagement messages behind the high watermarks of this consumer's partitions.",
)
TWEET_WINDOWS_S = {"tweet_engagements_30m": 1800.0, "tweet_engagements_1h": 3600.0}
USER_WINDOWS_S = {"user_engagements_1h": 3600.0}
_LONGEST_S = max(*TWEET_WINDOWS_S.values(), *USER_WINDOWS_S.values())
assert set(TWEET_WINDOWS_S) == set(spec.VIEWS["tweet_realtime"].feature_names)
assert set(USER_WINDOWS_S) == set(spec.VIEWS["user_realtime"].feature_names)


@dataclass(frozen=True)
class _Event:
    ts: float
    partition: int
    offset: int


class WindowCounters:
    """Sliding event-time counts of positive engagements per tweet and per user."""

    def __init__(self) -> None:
        self.stream_ts: float | None = None
        self._events: dict[str, dict[int, collections.deque[_Event]]] = {
            "tweet": collections.defaultdict(collections.deque),
            "user": collections.defaultdict(collections.deque),
        }
        self._pushed: dict[str, dict[int, tuple[int, ...]]] = {"tweet": {}, "user": {}}
        self._dirty: dict[str, set[int]] = {"tweet": set(), "user": set()}

    def add(self, engagement: Engagement, partition: int = 0, offset: int = 0) -> bool:
        """Count one engagement (ignored unless its head is positive); True if counted."""
        if engagement.head not in POSITIVE_HEADS:
            return False
        ts = engagement.engaged_at.timestamp()
        event = _Event(ts, partition, offset)
        for kind, key in (("tweet", engagement.tweet_id), ("user", engagement.user_id)):
            bucket = self._events[kind][key]
            bucket.append(event)
            if len(bucket) > 1 and bucket[-2].ts > ts:  # late event: keep the deque sorted
                self._events[kind][key] = collections.deque(sorted(bucket, key=lambda e: e.ts))
            self._dirty[kind].add(key)
        self.stream_ts = ts if self.stream_ts is None else max(self.stream_ts, ts)
        return True

    def advance(self, stream_ts: float) -> None:
        """Move the stream time forward to ``stream_ts`` without an event (never back).

        The next :meth:`changed_rows` then re-pushes every counter whose events left a window
        by then, lower or as a tombstone: what the offline table holds at that moment.
        """
        if self.stream_ts is not None and stream_ts > self.stream_ts:
            self.stream_ts = stream_ts

    def _counts(self, bucket: Iterable[_Event], windows: dict[str, float]) -> tuple[int, ...]:
        now = self.stream_ts or 0.0
        return tuple(sum(1 for e in bucket if now - w < e.ts <= now) for w in windows.values())

    def changed_rows(self) -> dict[str, pd.DataFrame]:
        """Counters that changed since the last call, as push DataFrames per stream view.

        Expired events are dropped first, so entities that went quiet are included with
        their lower counts, or null counts (a tombstone) once all of them are zero.
        """
        if self.stream_ts is None:
            return {}
        now = self.stream_ts
        out: dict[str, pd.DataFrame] = {}
        for kind, view, key_name, windows in (
            ("tweet", "tweet_realtime", "tweet_id", TWEET_WINDOWS_S),
            ("user", "user_realtime", "user_id", USER_WINDOWS_S),
        ):
            events, pushed = self._events[kind], self._pushed[kind]
            candidates = set(self._dirty[kind])
            for key, bucket in list(events.items()):
                if bucket and bucket[0].ts <= now - min(windows.values()):
                    candidates.add(key)  # something may have left a window
            rows = []
            for key in sorted(candidates):
                bucket = events.get(key, collections.deque())
                while bucket and bucket[0].ts <= now - _LONGEST_S:
                    bucket.popleft()
                counts = self._counts(bucket, windows)
                if not bucket:
                    events.pop(key, None)
                if pushed.get(key, (0,) * len(windows)) != counts or key in self._dirty[kind]:
                    live = any(counts)
                    rows.append((key, *(counts if live else (None,) * len(counts))))
                    pushed[key] = counts
                    if not live:
                        pushed.pop(key)
            self._dirty[kind].clear()
            if rows:
                frame = pd.DataFrame(rows, columns=[key_name, *windows]).astype(
                    {key_name: "int64", **dict.fromkeys(windows, "Int64")}  # Int64: nullable
                )
                event_ts = pd.Timestamp(now, unit="s", tz="UTC")
                frame["event_timestamp"] = event_ts
                frame["created_timestamp"] = pd.Timestamp.now(tz="UTC")
                out[view] = frame
        return out

    def replay_offsets(self) -> dict[int, int]:
        """Per partition, the oldest offset whose event is still inside a window."""
        oldest: dict[int, int] = {}
        for buckets in self._events.values():
            for bucket in buckets.values():
                for event in bucket:
                    if event.offset < oldest.get(event.partition, event.offset + 1):
                        oldest[event.partition] = event.offset
        return oldest


@dataclass
class StreamStats:
    """What one run of the stream job did (replayed messages are not in ``consumed``)."""

    consumed: int = 0
    replayed: int = 0
    counted: int = 0
    dead_lettered: int = 0
    pushed_rows: int = 0
    pushes: int = 0
    commits: int = 0
    lag: int = 0
    push_latency_ms: list[float] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"consumed {self.consumed} (+{self.replayed} replayed), counted {self.counted}, "
            f"dead-lettered {self.dead_lettered}, pushed {self.pushed_rows} rows in "
            f"{self.pushes} pushes, {self.commits} commits, lag {self.lag}"
        )


def _lag(consumer: Any) -> int:
    partitions = list(consumer.assignment())
    if not partitions:
        return 0
    ends = consumer.end_offsets(partitions)
    return int(sum(max(0, ends[tp] - consumer.position(tp)) for tp in partitions))


def _start_points(
    consumer: Any, partitions: Iterable[Any], *, at_end_if_new: bool
) -> dict[Any, tuple[int, int]]:
    """Per partition, ``(replay_from, resume_at)``: where reading starts, where counting new
    messages starts (the committed offset; before it, messages only rebuild the windows).

    A partition without a committed offset was never read by this group, so it starts at its
    beginning; if no partition has one (a new group) and ``at_end_if_new``, at its end.
    """
    committed = {tp: consumer.committed(tp, metadata=True) for tp in partitions}
    known = {tp: c for tp, c in committed.items() if c is not None and c.offset >= 0}
    starts: dict[Any, tuple[int, int]] = {}
    fresh = [tp for tp in committed if tp not in known]
    if fresh:
        at_end = at_end_if_new and not known
        offsets = consumer.end_offsets(fresh) if at_end else consumer.beginning_offsets(fresh)
        starts.update({tp: (offsets[tp], offsets[tp]) for tp in fresh})
    for tp, done in known.items():
        meta = done.metadata or ""
        starts[tp] = (min(int(meta), done.offset) if meta.isdigit() else done.offset, done.offset)
    return starts


def run_stream_features(
    settings: Settings | None = None,
    *,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    poll_timeout_ms: int = GROUP_POLL_TIMEOUT_MS,
    progress: bool = False,
    store: Any = None,
    group_id: str = GROUP_ID,
    new_group_from_latest: bool = False,
    stop: threading.Event | None = None,
    partition_check_s: float = 60.0,
) -> StreamStats:
    """Consume engagements, push windowed counters to Feast, commit; until told to stop.

    Args:
        settings: Kafka address and Feast profile (default: process settings).
        max_messages: stop after consuming this many new (not replayed) messages.
        idle_timeout_s: stop after this long without a message (None: never).
        poll_timeout_ms: longest wait of a poll that finds nothing (so of a stop request).
        progress: show a live counter on stderr.
        store: an existing FeatureStore (default: built from ``settings``).
        group_id: consumer group holding the committed offsets (the restart point).
        new_group_from_latest: a group without committed offsets starts at the end of the
            topic instead of its beginning.
        stop: set it to stop after the current batch.
        partition_check_s: how often the topic's partition list is checked for new ones.

    Returns:
        Counts of what was consumed, replayed, pushed and committed, and the final lag.
    """
    from feast.data_source import PushMode
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    from feedrank.featurestore import feature_store, push_source_name

    settings = settings or get_settings()
    arms, salt = dict(settings.experiment.arms), settings.experiment.salt
    store = store or feature_store(settings)
    counters = WindowCounters()
    stats = StreamStats()
    consumer = KafkaConsumer(
        **settings.kafka.client_options("stream-features"),
        group_id=group_id,
        enable_auto_commit=False,
        # Start points are explicit (see _start_points); this only applies to an offset that
        # retention has deleted since it was committed: read what is left, skip nothing.
        auto_offset_reset="earliest",
        max_poll_records=2000,
        **settings.kafka.group_consumer_options(),
    )
    producer = KafkaProducer(
        **settings.kafka.client_options("stream-features"), **settings.kafka.producer_options()
    )
    replaying: dict[Any, int] = {}  # partition -> committed offset the replay runs up to
    uncommitted: dict[Any, int] = {}  # partition -> next offset, counted but not committed

    def add_partitions(partitions: set[int], *, at_end_if_new: bool) -> None:
        """Own these partitions from their start points, and commit those at once."""
        starts = _start_points(
            consumer, [TopicPartition(TOPIC, p) for p in partitions], at_end_if_new=at_end_if_new
        )
        consumer.assign(sorted(consumer.assignment() | set(starts)))
        for tp, (replay_from, resume_at) in sorted(starts.items()):
            consumer.seek(tp, replay_from)
            if replay_from < resume_at:
                replaying[tp] = resume_at
            log.info("%s: reading from offset %d, new from %d", tp, replay_from, resume_at)
        consumer.commit(
            {tp: OffsetAndMetadata(new, str(old), -1) for tp, (old, new) in starts.items()}
        )

    def push_changed() -> None:
        """Push the counters that changed since the last push."""
        for view, frame in counters.changed_rows().items():
            store.push(push_source_name(view), frame, to=PushMode.ONLINE)
            stats.pushes += 1
            stats.pushed_rows += len(frame)
            PUSHED_ROWS.inc(len(frame))

    def push_and_commit() -> None:
        """Push the changed counters, then commit what they include (at-least-once)."""
        started = time.perf_counter()
        push_changed()
        stats.push_latency_ms.append(1e3 * (time.perf_counter() - started))
        PUSH_SECONDS.observe(time.perf_counter() - started)
        producer.flush()
        oldest = counters.replay_offsets()  # stored with the offset: where a restart replays
        consumer.commit(
            {
                tp: OffsetAndMetadata(next_, str(min(oldest.get(tp.partition, next_), next_)), -1)
                for tp, next_ in uncommitted.items()
            }
        )
        uncommitted.clear()
        stats.commits += 1
        LAST_PUSH.set_to_current_time()

    def topic_partitions() -> set[int]:
        """The topic's partitions, once the broker has them (the topic may be in creation)."""
        deadline = time.monotonic() + settings.kafka.ready_timeout_s
        while not (partitions := consumer.partitions_for_topic(TOPIC)):
            if time.monotonic() > deadline:
                raise FeedrankError(
                    f"topic {TOPIC!r} not found on {settings.kafka.bootstrap_servers}"
                )
            time.sleep(0.2)
        return set(partitions)

    bar = None
    try:
        add_partitions(topic_partitions(), at_end_if_new=new_group_from_latest)
        next_partition_check = time.monotonic() + partition_check_s
        if progress:
            from feedrank.logs import progress_bar

            bar = progress_bar(desc="engagements", unit="msg", total=max_messages)
        last_message = time.monotonic()
        last_event_ts: float | None = None  # stream time when the last message arrived
        idle_after_s = settings.stream_features.idle_advance_after_s
        while (max_messages is None or stats.consumed < max_messages) and not (
            stop is not None and stop.is_set()
        ):
            if time.monotonic() >= next_partition_check:
                next_partition_check = time.monotonic() + partition_check_s
                owned = {tp.partition for tp in consumer.assignment()}
                if added := consumer.partitions_for_topic(TOPIC) - owned:
                    log.info("%s has new partitions %s", TOPIC, sorted(added))
                    add_partitions(added, at_end_if_new=False)
            batch = consumer.poll(timeout_ms=poll_timeout_ms)
            if not batch:
                idle_s = time.monotonic() - last_message
                if idle_timeout_s is not None and idle_s > idle_timeout_s:
                    break
                if idle_s >= idle_after_s and last_event_ts is not None and not replaying:
                    counters.advance(last_event_ts + idle_s)
                    push_changed()  # nothing new was read: nothing to commit
                continue
            last_message = time.monotonic()
            for tp, records in batch.items():
                resume_at = replaying.get(tp, -1)
                for record in records:
                    replayed = record.offset < resume_at
                    if replayed:
                        stats.replayed += 1
                    elif max_messages is not None and stats.consumed >= max_messages:
                        break
                    else:
                        stats.consumed += 1
                    uncommitted[tp] = record.offset + 1
                    event = decode_record(TOPIC, record)
                    if isinstance(event, DeadLetter):
                        if not replayed:  # the run that read it first sent it already
                            producer.send(DLQ_TOPIC, event.to_bytes())
                            stats.dead_lettered += 1
                            CONSUMED.labels(outcome="dead_lettered").inc()
                    elif counters.add(event, tp.partition, record.offset) and not replayed:
                        stats.counted += 1
                        CONSUMED.labels(outcome="counted").inc()
                        arm = assign_arm(event.user_id, arms, salt)
                        ENGAGEMENTS.labels(arm=arm, head=event.head).inc()
                    elif not replayed:
                        CONSUMED.labels(outcome="other").inc()
            for tp, resume_at in list(replaying.items()):
                if consumer.position(tp) >= resume_at:
                    del replaying[tp]
                    log.info("%s: windows rebuilt up to offset %d", tp, resume_at)
            last_event_ts = counters.stream_ts
            if not replaying:  # while windows are incomplete, pushing would lower counts
                push_and_commit()
            stats.lag = _lag(consumer)
            LAG.set(stats.lag)
            log.info(
                "batch: %s; stream time %s%s",
                stats.summary(),
                dt.datetime.fromtimestamp(counters.stream_ts or 0, dt.UTC).isoformat(),
                f"; replaying {len(replaying)} partitions" if replaying else "",
            )
            if bar is not None:
                bar.update(sum(len(r) for r in batch.values()))
                bar.set_postfix(lag=stats.lag, pushed=stats.pushed_rows)
    finally:
        if bar is not None:
            bar.close()
        producer.close()
        consumer.close()
    return stats
