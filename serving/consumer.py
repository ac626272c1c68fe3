"""``feedrank serve``: the thin Kafka loop around :class:`serving.scorer.Scorer`.

One process = one member of the consumer group ``serving.group_id`` on ``feed_requests``;
start several and they share the partitions. Delivery is at-least-once:

1. poll a small batch (auto-commit is off);
2. for each message: size check, :func:`feedrank.schemas.decode`, score; the ranked feed goes
   to ``ranked_feeds`` and its impressions to ``impressions`` (both keyed by user); anything
   that cannot be answered goes to ``feed_requests.dlq`` with the reason — no input stops
   the loop;
3. wait until the producer has every output of the batch acknowledged (``acks=all``);
4. record the answered feeds in the feed cache (from now on a redelivery is a replay of
   the cached feed);
5. commit the batch's offsets.

A crash anywhere before 5 redelivers the batch: feeds already cached are replayed byte for
byte, the rest are recomputed deterministically, so duplicates are identical copies and only
come from that uncommitted window. The model watcher swaps models between messages.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.logs import setup_logging
from feedrank.schemas import DeadLetter, FeedRequest, decode, encode
from serving import metrics
from serving.feed_cache import open_feed_cache
from serving.reload import ModelWatcher
from serving.scorer import ModelSlot, Scorer

log = logging.getLogger("feedrank.serving")

REQUESTS_TOPIC = "feed_requests"
FEEDS_TOPIC = "ranked_feeds"
IMPRESSIONS_TOPIC = "impressions"
DLQ_TOPIC = "feed_requests.dlq"
MAX_POLL_RECORDS = 32  # small batches: a request never waits long behind its batch-mates
ACK_TIMEOUT_S = 30.0
LAG_REFRESH_S = 1.0
OVERSIZED_PREFIX_BYTES = 4096


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

    Raises:
        FeedrankError: There is no champion yet, or it fails verification.
    """
    from feedrank.registry import champion_version, load_model
    from serving.experiment import experiment_hooks
    from serving.hydration import FeatureHydrator

    version = champion_version(settings)
    if version is None:
        raise FeedrankError(
            f"no champion model under {settings.paths.models}; run 'feedrank train' and "
            "'feedrank promote' first"
        )
    model = load_model(version, settings, nthread=settings.serving.model_nthread)
    hooks = experiment_hooks(settings)
    return Scorer(
        settings, ModelSlot(model), FeatureHydrator(settings), open_feed_cache(settings), **hooks
    )


class _CommitOnRevoke(ConsumerRebalanceListener):
    """Commits acknowledged-but-uncommitted offsets of partitions being taken away.

    The loop commits every batch before it polls again, and rebalances run inside poll, so
    normally nothing is pending here; after a failed commit something is, and committing it
    now saves the new owner from redoing it. The callback runs on kafka-python's IO thread,
    where a blocking commit is not allowed, so it is sent asynchronously.
    """

    def __init__(self, loop: _ServingLoop) -> None:
        self.loop = loop

    def on_partitions_revoked(self, revoked: Any) -> None:
        pending = {tp: om for tp, om in self.loop.pending.items() if tp in revoked}
        log.info("partitions revoked %s; committing %s", sorted(revoked), pending or "nothing")
        if pending:
            self.loop.consumer.commit_async(pending)
        for tp in revoked:
            self.loop.pending.pop(tp, None)
            self.loop.positions.pop(tp, None)
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(str(tp.partition))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned %s", sorted(assigned))

    def on_partitions_lost(self, lost: Any) -> None:
        # Evicted: the partitions already belong to someone else; committing would fail.
        log.warning("partitions lost %s", sorted(lost))
        for tp in lost:
            self.loop.pending.pop(tp, None)
            self.loop.positions.pop(tp, None)


class _ServingLoop:
    def __init__(self, settings: Settings, scorer: Scorer, client_id: str) -> None:
        self.settings = settings
        self.scorer = scorer
        self.stats = ServingStats()
        self.watcher = ModelWatcher(settings, scorer.models)
        self.pending: dict[TopicPartition, OffsetAndMetadata] = {}
        self.positions: dict[TopicPartition, int] = {}
        bootstrap = settings.kafka.bootstrap_servers
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
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
        )
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=f"{client_id}-out",
            acks="all",
            # Outputs are flushed at the end of every poll batch, so linger only bounds the
            # wait of a half-full batch; large batches keep the ~50 impressions of a feed in
            # one produce request instead of waking the sender thread for every few of them.
            linger_ms=5,
            batch_size=512 * 1024,
            max_request_size=settings.kafka.topics[IMPRESSIONS_TOPIC].max_message_bytes,
            metrics_enabled=False,
        )
        # Know the topic's partitions before joining: a member that joins first gets an empty
        # assignment and must rejoin when the metadata arrives, which is slow and has been
        # seen to stall the join on kafka-python 3.0.
        if not self.consumer.partitions_for_topic(REQUESTS_TOPIC):
            raise FeedrankError(f"topic {REQUESTS_TOPIC} does not exist; run 'make up' first")
        self.consumer.subscribe([REQUESTS_TOPIC], listener=_CommitOnRevoke(self))
        self._next_lag_s = 0.0

    # ------------------------------------------------------------------ one message

    def _dead_letter(self, value: bytes | None, reason: str, kind: str) -> Any:
        text = value.decode("utf-8", errors="replace") if value is not None else ""
        letter = DeadLetter(
            source=REQUESTS_TOPIC, reason=reason, payload=text, failed_at=dt.datetime.now(dt.UTC)
        )
        metrics.DEAD_LETTERED.labels(kind=kind).inc()
        self.stats.dead_lettered += 1
        return self.producer.send(DLQ_TOPIC, value=letter.model_dump_json().encode())

    def handle(self, value: bytes | None, where: str = "") -> tuple[list[Any], Any]:
        """Answer one message; returns its producer futures and the feed to cache (or None).

        Args:
            value: The message value.
            where: ``topic/partition@offset`` of the message, for dead-letter reasons.
        """
        max_bytes = self.settings.serving.max_request_bytes
        if value is not None and len(value) > max_bytes:
            # The dead letter keeps a prefix (the DLQ has its own size limit); the reason
            # says where the full message stays for the topic's retention.
            reason = (
                f"oversized: {len(value)} bytes > max_request_bytes {max_bytes} "
                f"(payload truncated to {OVERSIZED_PREFIX_BYTES} bytes; full message "
                f"at {where})"
            )
            return [self._dead_letter(value[:OVERSIZED_PREFIX_BYTES], reason, "oversized")], None
        event = decode(REQUESTS_TOPIC, value)
        if isinstance(event, DeadLetter):
            kind = "invalid_json" if event.reason.startswith("not JSON") else "invalid"
            metrics.DEAD_LETTERED.labels(kind=kind).inc()
            self.stats.dead_lettered += 1
            return [self.producer.send(DLQ_TOPIC, value=event.model_dump_json().encode())], None
        assert isinstance(event, FeedRequest)
        try:
            answer = self.scorer.score(event)
        except Exception as exc:  # a request we cannot score must not stop the others
            log.exception("scoring failed for %s", event.request_id)
            reason = f"scoring failed: {type(exc).__name__}: {exc}".splitlines()[0][:500]
            return [self._dead_letter(value, reason, "scoring_failed")], None
        key = str(event.user_id).encode()
        futures = [self.producer.send(FEEDS_TOPIC, key=key, value=answer.payload)]
        if answer.impressions:
            partition = self._partition_of(IMPRESSIONS_TOPIC, key)
            futures += [
                self.producer.send(
                    IMPRESSIONS_TOPIC, key=key, value=encode(imp), partition=partition
                )
                for imp in answer.impressions
            ]
        if answer.replayed:
            self.stats.replayed += 1
            return futures, None
        self.stats.scored += 1
        self.stats.degraded += int(answer.feed.degraded)
        self.stats.missed += int(answer.missed)
        return futures, (answer.feed, answer.payload)

    def _partition_of(self, topic: str, key: bytes) -> int:
        """The partition the default partitioner gives ``key`` (murmur2, as the Java client).

        Computed once per feed for its ~50 impressions: kafka-python hashes in pure Python,
        and per-message hashing was a measurable share of the serving loop.
        """
        partitions = sorted(self.producer.partitions_for(topic))
        return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]

    # ------------------------------------------------------------------ one batch

    def run_batch(self, max_records: int) -> int:
        batch = self.consumer.poll(timeout_ms=100, max_records=max_records)
        if not batch:
            self._refresh_lag()
            return 0
        futures: list[Any] = []
        to_cache: list[Any] = []
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        first: dict[TopicPartition, int] = {}
        n = 0
        for tp, records in batch.items():
            for record in records:
                self.watcher.maybe_swap()
                where = f"{tp.topic}/{tp.partition}@{record.offset}"
                record_futures, cached = self.handle(record.value, where)
                futures += record_futures
                if cached is not None:
                    to_cache.append(cached)
                first.setdefault(tp, record.offset)
                offsets[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
                n += 1
        self.stats.consumed += n
        try:
            self.producer.flush(timeout=ACK_TIMEOUT_S)
        except KafkaError as exc:
            log.error("producer flush failed: %s", exc)
        failed = [f for f in futures if not (f.is_done and f.succeeded())]
        if failed:
            log.error(
                "%d outputs not acknowledged (%s); redelivering the batch",
                len(failed),
                failed[0].exception,
            )
            self._rewind(first)
            return n
        if to_cache and self.scorer.feed_cache is not None:
            self.scorer.feed_cache.put_many(to_cache)
        self.pending.update(offsets)
        try:
            self.consumer.commit(dict(self.pending))
            self.stats.commits += 1
            self.pending.clear()
        except KafkaError as exc:
            # Typically a rebalance took the partitions: the new owner redoes the batch, and
            # its cached feeds make that a replay.
            log.warning("commit failed (%s); the batch may be redelivered", exc)
            self.pending.clear()
        for tp, om in offsets.items():
            self.positions[tp] = om.offset
        self._refresh_lag()
        return n

    def _rewind(self, first: dict[TopicPartition, int]) -> None:
        self.stats.redeliveries += 1
        for tp, offset in first.items():
            if tp in self.consumer.assignment():
                self.consumer.seek(tp, offset)

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now < self._next_lag_s:
            return
        self._next_lag_s = now + LAG_REFRESH_S
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
            self.producer.flush(timeout=ACK_TIMEOUT_S)
            self.producer.close(timeout=10)
        finally:
            # Everything answered is committed already; leaving the group lets the others
            # take the partitions at once instead of after a session timeout.
            self.consumer.close(autocommit=False)


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
    metrics.serve_metrics(settings.serving.metrics_port)
    own_scorer = scorer is None
    scorer = scorer or build_scorer(settings)
    client_id = f"feedrank-serve-{os.getpid()}-{threading.get_ident() % 10_000}"
    loop = _ServingLoop(settings, scorer, client_id)
    log.info(
        "serving %s as %s in group %s with model %s",
        REQUESTS_TOPIC,
        client_id,
        settings.serving.group_id,
        scorer.models.current.version,
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
            if scorer.feed_cache is not None:
                scorer.feed_cache.close()
    log.info("serving stopped: %s", loop.stats.as_dict())
    return loop.stats
