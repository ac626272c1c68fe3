"""``feedrank serve``: the thin Kafka loop around :class:`serving.scorer.Scorer`.

Long because: the at-least-once loop (poll, answer, settle, commit) is one state machine.

One process = one member of the consumer group ``serving.group_id`` on ``feed_requests``;
start several and they share the partitions. Delivery is at-least-once:

1. poll a small batch (auto-commit is off);
2. for each message: :func:`feedrank.schemas.decode` (bounded by
   ``serving.max_request_bytes``), score; the ranked feed goes
   to ``ranked_feeds`` and its impressions to ``impressions`` (one message per feed; both
   keyed by user); anything that cannot be answered goes to ``feed_requests.dlq`` with the
   reason — no input stops the loop;
3. once the producer has every output of the batch acknowledged (``acks=all``), the batch
   is settled; then, after answering a batch, at most every ``COMMIT_INTERVAL_S``:
4. record the settled batches' feeds in the feed cache, in one transaction (from now on a
   redelivery is a replay of the cached feed), and commit their offsets, asynchronously.

Steps 3–4 do not hold up the next poll: a batch's outputs are in flight while the next
requests are scored, and it is settled, oldest first, as soon as its acknowledgements are in
(waiting for the acknowledgements and committing after every batch cost ~11 ms a batch,
measured under bench load). At most ``MAX_UNSETTLED_RECORDS`` messages are answered and not
yet committed; a failed output rewinds to the first unsettled message. A crash anywhere
before 4 redelivers those messages: feeds already cached are replayed byte for byte, the
rest are recomputed (identical copies unless the time left made the funnel prune or degrade
differently), so duplicates only come from that uncommitted window. The model watcher swaps
models between messages.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from feedrank.config import GROUP_POLL_TIMEOUT_MS, Settings, Topics
from feedrank.errors import FeedrankError
from feedrank.logs import setup_logging
from feedrank.schemas import (
    DeadLetter,
    FeedRequest,
    Impression,
    ServedImpressions,
    dead_letter,
    decode_record,
    encode,
)
from serving import metrics
from serving.feed_cache import open_feed_cache
from serving.reload import ModelWatcher
from serving.scorer import (
    NO_CHAMPION_RANKER,
    Arrival,
    ModelSlot,
    Scorer,
    load_serving_model,
    observe_cpu,
)

log = logging.getLogger("feedrank.serving")

REQUESTS_TOPIC = Topics.FEED_REQUESTS
FEEDS_TOPIC = Topics.RANKED_FEEDS
IMPRESSIONS_TOPIC = Topics.IMPRESSIONS
DLQ_TOPIC = Topics.dlq(REQUESTS_TOPIC)
MAX_POLL_RECORDS = 32  # small batches: a request never waits long behind its batch-mates
# Answered but not yet acknowledged and committed: the window a crash redelivers.
MAX_UNSETTLED_RECORDS = 2 * MAX_POLL_RECORDS
COMMIT_INTERVAL_S = 0.2
ACK_TIMEOUT_S = 30.0
# A forced (synchronous) commit gives up after this and counts as failed: kafka-python's own
# wait is the consumer's request timeout (305 s), past max_poll_interval_ms (300 s), so a
# commit answered late would get the member evicted.
COMMIT_TIMEOUT_MS = 10_000
LAG_REFRESH_S = 1.0
RECORD_OVERHEAD_BYTES = 1024  # key, headers and batch framing around a record's value


@dataclass
class _InFlight:
    """One answered batch whose outputs the broker has not acknowledged yet."""

    futures: list[Any] = field(default_factory=list)
    to_cache: list[Any] = field(default_factory=list)
    first: dict[TopicPartition, int] = field(default_factory=dict)  # offset of its first
    next: dict[TopicPartition, int] = field(default_factory=dict)  # after its last


@dataclass
class ServingStats:
    """What one :func:`run_serving` call did."""

    consumed: int = 0
    scored: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    degraded: int = 0
    missed: int = 0
    commits: int = 0
    redeliveries: int = 0  # batches rewound after a failed produce or commit

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def build_scorer(settings: Settings) -> Scorer:
    """The production scorer: champion model, Feast hydrator, the profile's feed cache.

    With no champion yet (none promoted, or the gate refused the first model) it answers with
    the fallback ranker (:data:`serving.scorer.NO_CHAMPION_RANKER`, feeds flagged
    ``degraded``) until the model watcher sees a champion and swaps it in.

    Raises:
        FeedrankError: The champion fails verification.
    """
    from feedrank.tracking import TrackingUnavailable, champion_version, tracking_uri
    from serving.experiment_hooks import experiment_hooks
    from serving.hydration import FeatureHydrator

    try:
        version = champion_version(settings)
    except TrackingUnavailable as exc:
        # Nothing to keep serving yet: the fallback answers until the store is back.
        log.error("%s; starting without a model", exc)
        version = None
    model = None if version is None else load_serving_model(version, settings)
    hooks = experiment_hooks(settings)
    scorer = Scorer(
        settings, ModelSlot(model), FeatureHydrator(settings), open_feed_cache(settings), **hooks
    )
    if version is None:
        log.warning(
            "no champion model in %s: answering with the %s fallback (degraded) until one "
            "is promoted",
            tracking_uri(settings),
            NO_CHAMPION_RANKER,
        )
    return scorer


class _RebalanceListener(ConsumerRebalanceListener):
    """Forgets the offsets of partitions taken away.

    Nothing is committed here: an evicted member's partitions already belong to someone
    else (kafka-python reports them as revoked when it rejoins), so a commit would fail. What
    this member answered since its last commit (at most ``MAX_UNSETTLED_RECORDS`` messages
    under load) is redone by the new owner: replays from the feed cache, or recomputed
    copies. The loop only reads snapshots of the offset maps this changes.
    """

    def __init__(self, loop: _ServingLoop) -> None:
        self.loop = loop

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked %s", sorted(revoked))
        metrics.ASSIGNED_PARTITIONS.set(0)  # until the loop polls with the new assignment
        self.loop.forget(revoked)
        for tp in revoked:
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(str(tp.partition))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned %s", sorted(assigned))


def impression_messages(impressions: list[Impression], max_bytes: int) -> list[bytes]:
    """A served feed's impressions as :class:`ServedImpressions` values of at most ``max_bytes``.

    One message per feed; a feed too large for the topic's message limit (long, with feature
    vectors) is halved until each part fits.
    """
    value = encode(ServedImpressions(impressions=impressions))
    if len(value) <= max_bytes or len(impressions) == 1:
        return [value]
    half = len(impressions) // 2
    return impression_messages(impressions[:half], max_bytes) + impression_messages(
        impressions[half:], max_bytes
    )


class _ServingLoop:
    def __init__(self, settings: Settings, scorer: Scorer, client_id: str) -> None:
        self.settings = settings
        self.scorer = scorer
        self.stats = ServingStats()
        self.watcher = ModelWatcher(settings, scorer.models)
        self._count_unknown = metrics.count_unknown_fields(REQUESTS_TOPIC)
        # Per partition, offsets (of the next message) as the loop moves on: answered, then
        # settled (``positions``), then committed (``committed``; ``base`` before the first
        # commit).
        self.answered: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.base: dict[TopicPartition, int] = {}
        self._next_commit_s = 0.0
        self._commit_failed = False
        self.in_flight: deque[_InFlight] = deque()
        # Settled batches (every output acknowledged) whose feeds are not cached yet: the
        # next commit caches them, then commits their offsets.
        self.acknowledged: list[_InFlight] = []
        self.consumer = KafkaConsumer(
            **settings.kafka.client_options("serve"),
            client_id=client_id,
            group_id=settings.serving.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS,
            # Oversized requests must reach us (to be dead-lettered), not stall the fetch.
            max_partition_fetch_bytes=max(
                settings.kafka.topics[REQUESTS_TOPIC].max_message_bytes, 1_048_576
            )
            * 2,
            # kafka-python's client-side sensors are never read here (serving exports its own
            # Prometheus metrics) and cost Python time on every request and response.
            metrics_enabled=False,
            **settings.kafka.group_consumer_options(),
        )
        self._impressions_max_bytes = settings.kafka.topics[IMPRESSIONS_TOPIC].max_message_bytes
        self.producer = KafkaProducer(
            **settings.kafka.client_options("serve"),
            client_id=f"{client_id}-out",
            **settings.kafka.producer_options(),
            # A feed's two outputs (the feed, its impressions message) go out at once: waiting
            # for more records would only delay the answer.
            linger_ms=0,
            batch_size=512 * 1024,
            max_request_size=self._impressions_max_bytes,
            metrics_enabled=False,
        )
        # Know the topic's partitions before joining: a member that joins first gets an empty
        # assignment and must rejoin when the metadata arrives, which is slow (and stalled
        # the join on kafka-python 3.0, used before 2.3).
        if not self.consumer.partitions_for_topic(REQUESTS_TOPIC):
            raise FeedrankError(f"topic {REQUESTS_TOPIC} does not exist; run 'make up' first")
        self.consumer.subscribe([REQUESTS_TOPIC], listener=_RebalanceListener(self))
        self._next_lag_s = 0.0

    # ------------------------------------------------------------------ one message

    def _send_dead_letter(self, letter: DeadLetter) -> Any:
        metrics.DEAD_LETTERED.labels(kind=letter.kind).inc()
        self.stats.dead_lettered += 1
        return self.producer.send(DLQ_TOPIC, value=letter.to_bytes())

    def handle(
        self,
        record: Any,
        tp: TopicPartition,
        waiting: int = 0,
        arrival: Arrival | None = None,
    ) -> tuple[list[Any], Any]:
        """Answer one message; returns its producer futures and the feed to cache (or None).

        Args:
            record: The consumed record (``value``, ``key``, ``offset``); any bytes at all.
            tp: Its topic partition, copied into a dead letter.
            waiting: Messages of the same poll still to be answered after this one.
            arrival: When the poll that returned it was called and returned.
        """
        # The dead letter keeps a prefix; the full message stays at its offset for the
        # topic's retention.
        cpu = time.thread_time()
        event = decode_record(
            REQUESTS_TOPIC,
            record,
            max_bytes=self.settings.serving.max_request_bytes,
            on_unknown=self._count_unknown,
        )
        observe_cpu("decode", cpu)
        if isinstance(event, DeadLetter):
            return [self._send_dead_letter(event)], None
        assert isinstance(event, FeedRequest)
        try:
            answer = self.scorer.score(event, waiting=waiting, arrival=arrival)
        except Exception as exc:  # a request we cannot score must not stop the others
            log.exception("scoring failed for %s", event.request_id)
            reason = f"scoring failed: {type(exc).__name__}: {exc}".splitlines()[0][:500]
            letter = dead_letter(
                REQUESTS_TOPIC,
                "scoring_failed",
                reason,
                record.value,
                partition=tp.partition,
                offset=record.offset,
                key=record.key,
            )
            return [self._send_dead_letter(letter)], None
        cpu = time.thread_time()
        key = str(event.user_id).encode()
        futures = [self.producer.send(FEEDS_TOPIC, key=key, value=answer.payload)]
        futures[0].add_callback(_observe_ack, time.time())
        if answer.impressions:
            limit = self._impressions_max_bytes - RECORD_OVERHEAD_BYTES
            futures += [
                self.producer.send(IMPRESSIONS_TOPIC, key=key, value=value)
                for value in impression_messages(answer.impressions, limit)
            ]
        observe_cpu("encode_produce", cpu)
        if answer.replayed:
            self.stats.replayed += 1
            return futures, None
        self.stats.scored += 1
        self.stats.degraded += int(answer.feed.degraded)
        self.stats.missed += int(answer.missed)
        return futures, (answer.feed, answer.payload)

    # ------------------------------------------------------------------ one batch

    def run_batch(self, max_records: int) -> int:
        """Answer one poll's worth of messages; returns how many were consumed.

        The batch's outputs are not waited for here: they join ``in_flight`` and are settled
        (acknowledged → cached → committed) by later calls, so the broker's acknowledgement
        and commit round trips overlap the scoring of the next requests instead of delaying
        them. At most ``MAX_UNSETTLED_RECORDS`` messages are answered and not yet committed.
        """
        self._settle()
        if self.uncommitted() + max_records > MAX_UNSETTLED_RECORDS:
            # Keep the window a crash would redeliver bounded: settle and commit first.
            self._settle(wait=True)
            if not self._commit_failed:
                self._commit(force=True)
        poll_called_s = time.time()
        batch = self.consumer.poll(timeout_ms=GROUP_POLL_TIMEOUT_MS, max_records=max_records)
        arrival = Arrival(poll_called_s, time.time())
        # After a poll the member has joined and knows where to fetch its partitions from.
        metrics.ASSIGNED_PARTITIONS.set(len(self.consumer.assignment()))
        n = 0
        if batch:
            answered = _InFlight()
            polled = sum(len(records) for records in batch.values())
            for tp, records in batch.items():
                for record in records:
                    self.watcher.maybe_swap()
                    record_futures, cached = self.handle(record, tp, polled - n - 1, arrival)
                    answered.futures += record_futures
                    if cached is not None:
                        answered.to_cache.append(cached)
                    answered.first.setdefault(tp, record.offset)
                    answered.next[tp] = record.offset + 1
                    self.base.setdefault(tp, record.offset)
                    self.answered[tp] = record.offset + 1
                    n += 1
            self.in_flight.append(answered)
            self.stats.consumed += n
            self._settle()
            self._commit()
        self._refresh_lag()
        _observe_gc_pauses()
        return n

    def uncommitted(self) -> int:
        """Messages answered whose offsets are not acknowledged as committed: what a crash
        now would redeliver."""
        return sum(
            max(0, nxt - self.committed.get(tp, self.base.get(tp, nxt)))
            for tp, nxt in list(self.answered.items())
        )

    def forget(self, partitions: Any) -> None:
        """Drop the offsets of partitions this member no longer owns."""
        for tp in partitions:
            for offsets in (self.answered, self.positions, self.committed):
                offsets.pop(tp, None)
            self.base.pop(tp, None)
            for batch in self.acknowledged:  # their feeds are still cached (for the new owner)
                batch.next.pop(tp, None)

    def _settle(self, wait: bool = False) -> None:
        """Settle the in-flight batches whose outputs are all acknowledged, oldest first.

        A settled batch joins ``acknowledged``: the next commit caches its feeds (from then
        on a redelivery replays them) and commits its offsets. A batch with an output
        that failed, or that is still unacknowledged after ``ACK_TIMEOUT_S`` when ``wait`` is
        set, rewinds its partitions to its first message, and every later batch with it:
        they are redone.

        Args:
            wait: Block until every batch is settled (or rewound).
        """
        while self.in_flight:
            oldest = self.in_flight[0]
            if wait:
                deadline_s = time.monotonic() + ACK_TIMEOUT_S
                for future in oldest.futures:
                    with contextlib.suppress(KafkaError):
                        future.get(timeout=max(deadline_s - time.monotonic(), 0.0))
            elif not all(f.is_done for f in oldest.futures):
                return
            failed = [f for f in oldest.futures if not (f.is_done and f.succeeded())]
            if failed:
                log.error(
                    "%d outputs not acknowledged (%s); redelivering %d in-flight batch(es)",
                    len(failed),
                    failed[0].exception,
                    len(self.in_flight),
                )
                self._rewind(list(self.in_flight))
                self.in_flight.clear()
                return
            self.acknowledged.append(self.in_flight.popleft())

    def _record_acknowledged(self) -> None:
        """Cache the feeds of the acknowledged batches (one transaction), then make their
        offsets committable (``positions``): a redelivery of a committed-to-be message is then
        a replay. Called just before a commit, so the feed cache sees one write per
        ``COMMIT_INTERVAL_S`` instead of one per batch (one SQLite transaction per batch took
        0.88 ms of the loop per request at 100 req/s, two serve processes writing)."""
        if not self.acknowledged:
            return
        feeds = [feed for batch in self.acknowledged for feed in batch.to_cache]
        if feeds and self.scorer.feed_cache is not None:
            started = time.perf_counter()
            self.scorer.feed_cache.put_many(feeds)
            metrics.LOOP_STEP.labels(step="settle").observe(time.perf_counter() - started)
        for batch in self.acknowledged:
            self.positions.update(batch.next)
        self.acknowledged.clear()

    def _commit(self, force: bool = False) -> None:
        """Commit the settled offsets of partitions still assigned, at most every
        ``COMMIT_INTERVAL_S`` unless ``force``.

        Only right after answering a batch: a poll that returned records, so the group was
        stable. Never after an empty poll, which may be a rebalance under way. What a member
        answered last before going idle is committed with its next batch or when it stops; a
        crash meanwhile redelivers it, as at-least-once allows.

        Asynchronous unless ``force``: the broker's answer is handled by a later poll
        (:meth:`_committed`), so requests are scored meanwhile (a synchronous round trip
        held the loop for 8–20 ms under bench load, every ``COMMIT_INTERVAL_S``). Forced
        commits (the unsettled window is full, or the member stops) wait for it.
        """
        now = time.monotonic()
        if not force and now < self._next_commit_s:
            return
        self._record_acknowledged()
        owned = self.consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(pos, "", -1)
            for tp, pos in list(self.positions.items())
            if tp in owned and pos > self.committed.get(tp, -1)
        }
        if not offsets:
            return
        self._next_commit_s = now + COMMIT_INTERVAL_S
        started = time.perf_counter()
        if not force:
            self.consumer.commit_async(offsets, callback=self._committed)
            metrics.LOOP_STEP.labels(step="commit").observe(time.perf_counter() - started)
            return
        try:
            self.consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as exc:
            self._committed(offsets, exc)
            return
        metrics.LOOP_STEP.labels(step="commit").observe(time.perf_counter() - started)
        self._committed(offsets, None)

    def _committed(self, offsets: dict[TopicPartition, OffsetAndMetadata], result: Any) -> None:
        """A commit's outcome (on the loop's thread: kafka-python calls an asynchronous
        commit's callback from a later poll). ``result``: an exception (instance or class)
        if it failed."""
        if isinstance(result, BaseException) or (
            isinstance(result, type) and issubclass(result, BaseException)
        ):
            # Typically a rebalance took the partitions: the new owner redoes those messages,
            # and their cached feeds make that a replay. No forced retry until a commit after
            # a batch succeeds: a failing commit usually means the group is rebalancing.
            log.warning("commit failed (%s); the last messages may be redelivered", result)
            self._commit_failed = True
            return
        self._commit_failed = False
        self.stats.commits += 1
        for tp, om in offsets.items():
            if tp in self.answered:  # still ours
                self.committed[tp] = max(om.offset, self.committed.get(tp, -1))

    def _rewind(self, batches: list[_InFlight]) -> None:
        self.stats.redeliveries += 1
        first: dict[TopicPartition, int] = {}
        for batch in batches:
            for tp, offset in batch.first.items():
                first[tp] = min(offset, first.get(tp, offset))
        for tp, offset in first.items():
            if tp in self.consumer.assignment():
                self.consumer.seek(tp, offset)
                self.answered[tp] = offset

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now < self._next_lag_s:
            return
        self._next_lag_s = now + LAG_REFRESH_S
        with metrics.LOOP_STEP.labels(step="lag").time():
            self._refresh_lag_gauges()

    def _refresh_lag_gauges(self) -> None:
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            position = self.positions.get(tp)
            if high is None:
                continue
            if position is None:
                try:
                    position = self.consumer.position(tp, timeout_ms=100)
                except KafkaError:
                    continue
            if position is not None:
                metrics.CONSUMER_LAG.labels(partition=str(tp.partition)).set(high - position)

    def close(self) -> None:
        try:
            with contextlib.suppress(KafkaError):
                self.producer.flush(timeout=ACK_TIMEOUT_S)
            self._settle(wait=True)
            self._commit(force=True)
            self.producer.close(timeout=10)
        finally:
            # Everything answered is committed already; leaving the group lets the others
            # take the partitions at once instead of after a session timeout.
            self.consumer.close(autocommit=False)


def _observe_ack(sent_s: float, _metadata: Any) -> None:
    """On the producer's I/O thread: a feed's send → the broker's acknowledgement."""
    metrics.WAIT.labels(phase="ack").observe(time.time() - sent_s)


_gc_started_s: list[float] = []
# (generation, seconds) of each collection, until the loop observes them. The callback runs
# inside whatever allocation set the collector off, possibly under a lock of
# prometheus_client (in multiprocess mode one lock guards every value, and a metric's
# first use allocates while holding it): taking any lock there deadlocked the serve loop.
_gc_pauses: deque[tuple[int, float]] = deque(maxlen=10_000)
_GC_PAUSE_BY_GENERATION = [metrics.GC_PAUSE.labels(generation=str(g)) for g in range(3)]


def _time_gc(phase: str, info: dict[str, int]) -> None:
    """gc.callbacks hook: notes each collection's pause; takes no lock (see above)."""
    if phase == "start":
        _gc_started_s[:] = [time.perf_counter()]
    elif _gc_started_s:
        _gc_pauses.append((info["generation"], time.perf_counter() - _gc_started_s.pop()))


def _observe_gc_pauses() -> None:
    """Move the noted pauses into ``feedrank_serving_gc_pause_seconds`` (on the loop)."""
    while _gc_pauses:
        generation, seconds = _gc_pauses.popleft()
        _GC_PAUSE_BY_GENERATION[generation].observe(seconds)


def run_serving(
    settings: Settings,
    max_requests: int | None = None,
    stop_event: threading.Event | None = None,
    *,
    scorer: Scorer | None = None,
) -> ServingStats:
    """Consume ``feed_requests`` and answer them until stopped.

    Args:
        settings: Resolved settings (``kafka``, ``serving``, ``ranking``).
        max_requests: Stop after this many messages were consumed and committed (answered or
            dead-lettered); ``None`` runs until ``stop_event``.
        stop_event: Set it to stop after the current batch.
        scorer: The scorer to use (tests inject one); default :func:`build_scorer`.

    Returns:
        Counters of what was done.
    """
    setup_logging("serving", settings)
    metrics.serve_metrics(settings.serving.metrics_port, settings.observability.metrics_host)
    own_scorer = scorer is None
    scorer = scorer or build_scorer(settings)
    client_id = f"feedrank-serve-{os.getpid()}-{threading.get_ident() % 10_000}"
    # Everything built so far (imports, model, hydrator cache: ~280k objects) lives as long
    # as the process; frozen, the collector stops traversing it. Unfrozen, each full
    # collection paused the loop for 160–250 ms (measured under bench load). Done before
    # joining the group, so the long collection cannot delay the join.
    gc.collect()
    gc.freeze()
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)
    loop = _ServingLoop(settings, scorer, client_id)
    log.info(
        "serving %s as %s in group %s with model %s",
        REQUESTS_TOPIC,
        client_id,
        settings.serving.group_id,
        scorer.models.version or f"none ({NO_CHAMPION_RANKER} fallback)",
    )
    try:
        while not (stop_event is not None and stop_event.is_set()):
            remaining = None if max_requests is None else max_requests - loop.stats.consumed
            if remaining is not None and remaining <= 0:
                break
            loop.run_batch(
                MAX_POLL_RECORDS if remaining is None else min(MAX_POLL_RECORDS, remaining)
            )
    finally:
        loop.close()
        if own_scorer:
            scorer.close()
            scorer.hydrator.close()  # the Redis mirror's thread
            if scorer.feed_cache is not None:
                scorer.feed_cache.close()
    log.info("serving stopped: %s", loop.stats.as_dict())
    return loop.stats
