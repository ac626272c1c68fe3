"""Prometheus metrics of the serving consumer, defined once for every ``feedrank serve``.

Latencies are in seconds (Prometheus convention); buckets are dense around the 300–400 ms
budget so the p99 against the deadline can be read off ``/metrics`` directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from feedrank.exporter import start_metrics_server

log = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
)

STAGE_LATENCY = Histogram(
    "feedrank_serving_stage_seconds",
    "Time spent in one scoring stage of a feed request.",
    ["stage"],
    buckets=_LATENCY_BUCKETS_S,
)
STAGE_CPU = Counter(
    "feedrank_serving_stage_cpu_seconds_total",
    "CPU time (of the thread doing the work, time.thread_time) spent in one stage of feed "
    "requests: decode, hydrate, light, heavy, rank, encode_produce. The process's total is "
    "process_cpu_seconds_total; the difference is Kafka I/O threads, polling and the rest.",
    ["stage"],
)
END_TO_END_LATENCY = Histogram(
    "feedrank_serving_end_to_end_seconds",
    "From the request's requested_at to its ranked feed being handed to the producer.",
    buckets=_LATENCY_BUCKETS_S,
)
WAIT = Histogram(
    "feedrank_serving_wait_seconds",
    "Where a feed request waits outside scoring, by phase: backlog (requested_at → the serve "
    "loop's poll that returned it was called: the loop was busy with earlier requests), fetch "
    "(from then, or from requested_at, → that poll returned: broker and fetch), queued (poll "
    "returned → its scoring started: behind the requests polled with it), ack (its feed "
    "handed to the producer → the broker acknowledged it).",
    ["phase"],
    buckets=_LATENCY_BUCKETS_S,
)
LOOP_STEP = Histogram(
    "feedrank_serving_loop_step_seconds",
    "Work of the serve loop between requests, by step: settle (acknowledged feeds into the "
    "feed cache), commit (offsets, a broker round trip) and lag (the lag gauges' refresh). "
    "Requests polled meanwhile wait (their backlog).",
    ["step"],
    buckets=_LATENCY_BUCKETS_S,
)
GC_PAUSE = Histogram(
    "feedrank_serving_gc_pause_seconds",
    "Python garbage collections in the serve process, by generation, and how long each held "
    "the interpreter (gc.callbacks).",
    ["generation"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
REQUESTS = Counter(
    "feedrank_serving_requests_total",
    "Feed requests answered, by how (scored, or replayed from the feed cache).",
    ["outcome"],
)
DEGRADED = Counter(
    "feedrank_serving_degraded_total",
    "Feeds answered by the light ranker instead of the heavy ranker, by reason.",
    ["reason"],
)
DEPENDENCY_ERRORS = Counter(
    "feedrank_serving_dependency_errors_total",
    "Calls to a dependency that failed and were answered around, by dependency: feed_cache "
    "(that request got no replay or seen-dedupe, or that feed was not cached) or "
    "online_store (that feed was answered without features: candidate order, degraded).",
    ["dependency"],
)
HEAVY_ROWS = Histogram(
    "feedrank_serving_heavy_rows",
    "Candidates the heavy ranker scored per request.",
    buckets=(50, 100, 200, 300, 400, 500, 600, 800, 1000, 1500, 2000, 5000),
)
HEAVY_PRUNED_FOR_AIM = Counter(
    "feedrank_serving_heavy_pruned_for_aim_total",
    "Requests whose candidates the light ranker pruned below heavy_ranker_cap to meet aim_ms.",
)
DEADLINE_MISSES = Counter(
    "feedrank_serving_deadline_misses_total",
    "Feeds answered after requested_at + budget_ms.",
)
DEAD_LETTERED = Counter(
    "feedrank_serving_dead_lettered_total",
    "feed_requests messages sent to feed_requests.dlq, by kind (feedrank.schemas.DeadLetterKind).",
    ["kind"],
)
UNKNOWN_FIELDS = Counter(
    "feedrank_serving_unknown_fields_total",
    "Fields the reader did not know and ignored (a newer producer's optional fields), by "
    "topic; each field counted once per message (feedrank.schemas.decode's on_unknown).",
    ["topic"],
)
CONSUMER_LAG = Gauge(
    "feedrank_serving_consumer_lag_messages",
    "Messages behind the partition's high watermark (this consumer's assignment).",
    ["partition"],
)
ASSIGNED_PARTITIONS = Gauge(
    "feedrank_serving_assigned_partitions",
    "feed_requests partitions this process owns and fetches from (0 until it has joined the "
    "group and polled, and during a rebalance): its readiness.",
)
MODEL_RELOADS = Counter(
    "feedrank_serving_model_reloads_total",
    "Champion changes seen by the model watcher, by outcome (loaded or refused).",
    ["outcome"],
)
MODEL_VERSION = Gauge(
    "feedrank_serving_model_info",
    "1 for the model version currently serving.",
    ["version"],
)


# Field names already logged; bounded, since the names come from whoever writes the topic.
_LOGGED_UNKNOWN_MAX = 100
_logged_unknown: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def count_unknown_fields(topic: str) -> Callable[[list[str]], None]:
    """The ``on_unknown`` hook of :func:`feedrank.schemas.decode` for a reader of ``topic``:
    counts the ignored fields in :data:`UNKNOWN_FIELDS` and logs each new field name once
    (the metric's only label is the topic, so a hostile writer cannot blow up its series)."""
    counter = UNKNOWN_FIELDS.labels(topic=topic)

    def record(fields: list[str]) -> None:
        counter.inc(len(fields))
        with _logged_lock:
            new = [f for f in fields if (topic, f) not in _logged_unknown]
            new = new[: max(0, _LOGGED_UNKNOWN_MAX - len(_logged_unknown))]
            _logged_unknown.update((topic, f) for f in new)
        for field in new:
            log.warning("ignoring unknown field %r of %s (a newer producer?)", field[:80], topic)

    return record


def serve_metrics(port: int, host: str = "127.0.0.1") -> int | None:
    """Expose ``/metrics`` on ``host``:``port`` once per process (0 disables it).

    Returns:
        The port serving metrics, or ``None`` when disabled.
    """
    return start_metrics_server(port, host)
