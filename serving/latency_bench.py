"""``feedrank bench serving``: end-to-end serving latency on the real broker.

Long because: three measurements (end to end, naive path, model floor) on the same requests.

One run measures, on the same requests:

* **end to end** — a ``feedrank serve`` process (its own consumer group, started at the end
  of ``feed_requests``) answers requests produced at a fixed rate; latency is request
  produced (``requested_at``) → ranked feed consumed by the bench: p50/p99, sustained
  throughput, deadline misses and the degraded share;
* **naive path** — Feast ``get_online_features(ranker_v1)`` + a DMatrix ``predict`` per head,
  what a first implementation would do;
* **model floor** — ``inplace_predict`` of every head on a ready matrix, with the serve
  processes' thread count (``serving.model_nthread``): the cost no serving design can remove.

The world: the run folder's champion model and Feast store when both exist (after
``make demo``); otherwise a synthetic one is built under ``<paths.home>/bench/serving``
(feature tables generated from the contract, applied and materialized into this profile's
online store, and a model the size the trainer produces — 100 trees of depth 6 per head; the
demo's champion, trained with early stopping, had 30–115 trees of depth 4–6 per head — saved
through feedrank.model_files).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from feedrank.config import HEADS, PathsConfig, Settings, Topics, redis_password_file
from feedrank.errors import FeedrankError
from feedrank.schemas import DEVICES, DeadLetter, FeedRequest, decode_record, encode
from feedrank.stats import percentile

SYNTHETIC_USERS, SYNTHETIC_TWEETS = 2_000, 20_000
SYNTHETIC_START = dt.date(2026, 11, 1)
READY_TIMEOUT_S = 300.0
BENCH_MODEL_TREES = 100
DRAIN_TIMEOUT_S = 60.0
# The unmeasured load's last seconds that must be answered on time before a settled
# measurement starts (``run_bench(settle_max_s=...)``).
SETTLE_WINDOW_S = 5.0
FLOOR_CALLS = 50


def _log(message: str) -> None:
    print(f"[bench serving] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the world


def _world_ids(settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """User and tweet ids present in the run folder's feature tables."""
    import pyarrow.dataset as ds

    from feedrank.featurestore import feature_table_path

    def ids(view: str, column: str) -> np.ndarray:
        path = feature_table_path(view, settings)
        if not path.exists():
            return np.empty(0, dtype=np.int64)
        table = ds.dataset(path, format="parquet").to_table(columns=[column])
        return np.unique(table.column(column).to_numpy())

    return ids("user_engagement_daily", "user_id"), ids("tweet_attributes", "tweet_id")


def _train_bench_model(settings: Settings) -> str:
    """A model of trained-champion size on synthetic rows (5 heads × 100 trees, depth 6)."""
    import xgboost as xgb

    from feedrank.feature_spec import model_features
    from feedrank.model import head_probabilities
    from feedrank.model_files import save_model
    from feedrank.ranking import weighted_score
    from feedrank.tracking import set_champion
    from jobs.train_light_ranker import distill_light_ranker

    rng = np.random.default_rng(11)
    n, f = 20_000, len(model_features())
    X = rng.normal(size=(n, f)).astype(np.float32)
    boosters = {}
    for k, head in enumerate(HEADS):
        logit = X[:, k] + 0.5 * X[:, k + 5] - X[:, k + 10] - 2.0
        y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        boosters[head] = xgb.train(
            {
                "objective": "binary:logistic",
                "max_depth": 6,
                "eta": 0.05,
                "tree_method": "hist",
                "nthread": settings.training.nthread,
            },
            xgb.DMatrix(X, label=y),
            num_boost_round=BENCH_MODEL_TREES,
        )
    # The light ranker is distilled from these heads, as ``feedrank train`` does (keep rates
    # 1.0: the raw probabilities are the calibrated ones).
    heavy = weighted_score(head_probabilities(boosters, X), settings.ranking.weights)
    light = distill_light_ranker(X, heavy)
    version = f"bench-{uuid.uuid4().hex[:8]}"
    save_model(
        settings,
        boosters=boosters,
        light_ranker=light,
        keep_rates={h: 1.0 for h in HEADS},
        training_data={"run": "synthetic-bench", "manifest_sha256": "0" * 64},
        version=version,
    )
    set_champion(settings, version)
    return version


def prepare_world(settings: Settings) -> tuple[Settings, str, np.ndarray, np.ndarray]:
    """The settings, champion, users and tweets the bench runs on (see module docstring)."""
    from feedrank.tracking import champion_version

    users, tweets = _world_ids(settings)
    champion = champion_version(settings)
    if champion is not None and len(users) and len(tweets):
        return settings, "demo", users, tweets
    from feedrank.synthetic_features import build_synthetic_store

    home = settings.paths.home / "bench" / "serving"
    world = settings.model_copy(update={"paths": PathsConfig(home=home)})
    users, tweets = _world_ids(world)
    if champion_version(world) is None or not len(tweets):
        _log(
            f"no champion + feature tables in {settings.paths.home}; building a synthetic "
            f"world in {home}"
        )
        build_synthetic_store(
            world,
            start=SYNTHETIC_START,
            users=SYNTHETIC_USERS,
            authors=400,
            tweets=SYNTHETIC_TWEETS,
            seed=1,
        )
        _train_bench_model(world)
        users, tweets = _world_ids(world)
    return world, "synthetic", users, tweets


# ------------------------------------------------------------------ Kafka plumbing


def _group_at_end(settings: Settings, group_id: str) -> None:
    """Commit the end offsets of feed_requests for a new group: it serves only new requests."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(
        **settings.kafka.client_options("admin"),
        group_id=group_id,
        enable_auto_commit=False,
    )
    try:
        parts = [
            TopicPartition(Topics.FEED_REQUESTS, p)
            for p in consumer.partitions_for_topic(Topics.FEED_REQUESTS)
        ]
        consumer.assign(parts)
        consumer.commit(
            {tp: OffsetAndMetadata(off, "", -1) for tp, off in consumer.end_offsets(parts).items()}
        )
    finally:
        consumer.close(autocommit=False)


def _feeds_consumer(settings: Settings) -> Any:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **settings.kafka.client_options("simulator"),
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        # The load generator shares the two cores with what it measures: kafka-python's
        # client-side sensors (never read here) were ~10 % of its Python time.
        metrics_enabled=False,
    )
    parts = [
        TopicPartition(Topics.RANKED_FEEDS, p)
        for p in consumer.partitions_for_topic(Topics.RANKED_FEEDS)
    ]
    consumer.assign(parts)
    for tp, offset in consumer.end_offsets(parts).items():
        consumer.seek(tp, offset)
    return consumer


def _start_server(
    world: Settings, group_id: str, log_path: Path, index: int = 0
) -> subprocess.Popen:
    env = {
        **os.environ,
        "FEEDRANK_PATHS__HOME": str(world.paths.home),
        "FEEDRANK_KAFKA__HOST": world.kafka.host,
        "FEEDRANK_KAFKA__PORT": str(world.kafka.port),
        "FEEDRANK_SERVING__GROUP_ID": group_id,
        "FEEDRANK_SERVING__METRICS_PORT": str(world.serving.process_metrics_port(index)),
        "FEEDRANK_SERVING__BUDGET_MS": str(world.serving.budget_ms),
        # The run folder's Redis password (pinned when the settings were resolved), not one
        # under the world's folder: the servers must authenticate to the same redis-server.
        "FEEDRANK_REDIS__PASSWORD_FILE": str(redis_password_file(world)),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "feedrank"), "serve"],
            env=env,
            stdout=log,
            stderr=log,
        )


class ServeProcesses:
    """The bench's ``feedrank serve`` processes (one consumer group); a fault scenario may
    ``kill -9`` one and start it again."""

    def __init__(self, world: Settings, group_id: str, log_path: Path, count: int) -> None:
        self.world, self.group_id, self.log_path = world, group_id, log_path
        self.procs = [_start_server(world, group_id, log_path, i) for i in range(count)]
        self.killed: set[int] = set()

    def kill(self, index: int) -> int:
        """``kill -9`` process ``index``; returns its pid."""
        proc = self.procs[index]
        self.killed.add(index)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return proc.pid

    def restart(self, index: int) -> int:
        """Start process ``index`` again (same group, same /metrics port); returns its pid."""
        self.procs[index] = _start_server(self.world, self.group_id, self.log_path, index)
        self.killed.discard(index)
        return self.procs[index].pid

    def check(self) -> None:
        """Raise if a process exited that no fault killed."""
        for index, server in enumerate(self.procs):
            if index not in self.killed and server.poll() is not None:
                raise FeedrankError(
                    f"feedrank serve exited ({server.returncode}); see {self.log_path}"
                )

    def stop(self) -> None:
        for server in self.procs:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
        for server in self.procs:
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()


# ------------------------------------------------------------------ the run

_STAGES = ("decode", "hydrate", "light", "heavy", "rank", "encode_produce")
# A request's waits in the serve process before scoring (serving.scorer.Arrival).
_WAIT_PHASES = ("backlog", "fetch", "queued")
_HEAVY_SAMPLES = (
    "feedrank_serving_heavy_rows_sum",
    "feedrank_serving_heavy_rows_count",
    "feedrank_serving_heavy_pruned_for_aim_total",
)


def _scrape(world: Settings, servers: int) -> dict[str, float]:
    """The servers' counters the bench reads, summed over processes (Prometheus ``/metrics``):
    heavy-ranker rows, requests scored, process CPU and CPU by stage (``stage:<name>``)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    totals = dict.fromkeys(
        (*_HEAVY_SAMPLES, "scored", "process_cpu_seconds_total", *(f"stage:{s}" for s in _STAGES)),
        0.0,
    )
    for index in range(servers):
        url = f"http://127.0.0.1:{world.serving.process_metrics_port(index)}/metrics"
        with urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in _HEAVY_SAMPLES or sample.name == "process_cpu_seconds_total":
                    totals[sample.name] += sample.value
                elif sample.name == "feedrank_serving_requests_total":
                    if sample.labels.get("outcome") == "scored":
                        totals["scored"] += sample.value
                elif sample.name == "feedrank_serving_stage_cpu_seconds_total":
                    key = f"stage:{sample.labels.get('stage')}"
                    totals[key] = totals.get(key, 0.0) + sample.value
                elif key := _pause_key(sample.name, sample.labels):
                    totals[key] = totals.get(key, 0.0) + sample.value
    return totals


# Pauses the bench reports from the servers' histograms: (metric, label), and the bound (s)
# above which one counts as long.
_PAUSES = {
    "feedrank_serving_gc_pause_seconds": ("generation", "0.01"),
    "feedrank_serving_wait_seconds": ("phase", "0.025"),
    "feedrank_serving_loop_step_seconds": ("step", "0.025"),
}


def _pause_key(name: str, labels: dict[str, str]) -> str | None:
    """``pause:<metric>:<label value>:<count|sum|long>`` for the samples of :data:`_PAUSES`
    (``long``: the bucket at the bound, turned into the count above it by
    :func:`_pause_figures`), else None."""
    for metric, (label, bound) in _PAUSES.items():
        if not name.startswith(metric) or label not in labels:
            continue
        suffix = name[len(metric) :]
        if suffix == "_bucket" and labels.get("le") == bound:
            return f"pause:{metric}:{labels[label]}:long"
        if suffix in ("_count", "_sum"):
            return f"pause:{metric}:{labels[label]}:{suffix[1:]}"
    return None


def _pause_figures(delta: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    """GC pauses by generation, server-side waits by phase and loop steps by step over one
    load phase (keys ``gc_pause``, ``wait``, ``loop_step``): how many, their mean and total
    (ms), and how many were longer than the bound of :data:`_PAUSES`."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in delta.items():
        if not key.startswith("pause:") or not key.endswith(":count"):
            continue
        _, metric, label, _ = key.split(":")
        prefix = f"pause:{metric}:{label}"
        total_ms = 1e3 * delta.get(f"{prefix}:sum", 0.0)
        short = metric.removeprefix("feedrank_serving_").removesuffix("_seconds")
        out.setdefault(short, {})[label] = {
            "count": value,
            "mean_ms": total_ms / value if value else 0.0,
            "total_ms": total_ms,
            f"over_{float(_PAUSES[metric][1]) * 1e3:g}ms": value - delta.get(f"{prefix}:long", 0.0),
        }
    return out


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of every core since boot (``/proc/stat``): other engineers'
    load shows up here."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _requests(
    users: np.ndarray, tweets: np.ndarray, candidates: int, n: int, seed: int
) -> list[tuple[int, list[int], str]]:
    rng = np.random.default_rng(seed)
    k = min(candidates, len(tweets))
    return [
        (
            int(rng.choice(users)),
            rng.choice(tweets, size=k, replace=False).tolist(),
            DEVICES[int(rng.integers(len(DEVICES)))],
        )
        for _ in range(n)
    ]


def run_bench(
    settings: Settings,
    *,
    candidates: int = 1000,
    rate_rps: float = 50.0,
    duration_s: float = 20.0,
    naive_requests: int = 10,
    servers: int = 1,
    warmup_s: float = 5.0,
    settle_max_s: float | None = None,
    curve_rates: tuple[float, ...] = (),
    fault: Callable[[float, ServeProcesses], None] | None = None,
    per_request: bool = False,
) -> dict[str, Any]:
    """Run the serving benchmark; returns the figures (see the module docstring).

    ``servers`` ``feedrank serve`` processes share the bench's consumer group (scale-out: with
    one process the GIL-bound loop, not the cores, caps the throughput). The top-level
    figures are those at ``rate_rps``; each rate of ``curve_rates`` is then loaded for
    ``duration_s`` too, on the same processes, and its figures go to ``load_curve``.

    Args:
        settle_max_s: Keep the unmeasured load going after ``warmup_s`` until the last
            :data:`SETTLE_WINDOW_S` of it was answered with a median latency (from when each
            request was due) within the budget, at most this long; then start the measured
            load on a schedule of its own. A standing backlog (cold processes, a load
            generator that fell behind) shifts every latency, so the median is over the
            budget until it has drained; a busy machine's noise alone leaves it under. None:
            the fixed ``warmup_s``, on one schedule with the measured load.
        fault: Run on a thread of its own when the measured load at ``rate_rps`` starts, with
            that wall time (``time.time()``) and the serve processes: a fault scenario
            (``serving.chaos_bench``) under load. Its exception fails the run once the load
            is over.
        per_request: Also return ``per_request``: each measured request's requested_at,
            when its first answer was consumed (None: never), how many answers it got,
            degraded, deadline_missed, served_at and the feed's timings_ms (its waits and
            stages in the serve process).
    """
    from kafka import KafkaProducer

    from feedrank.services.kafka_broker import broker_pids
    from feedrank.services.process import process_cpu_seconds

    world, world_kind, users, tweets = prepare_world(settings)
    if not len(users) or not len(tweets):
        raise FeedrankError("the bench world has no users or tweets")
    group_id = f"feedrank-bench-{uuid.uuid4().hex[:8]}"
    _group_at_end(world, group_id)
    log_path = world.paths.logs / "bench-serving.out"
    feeds = _feeds_consumer(world)
    producer = KafkaProducer(
        **world.kafka.client_options("simulator"),
        linger_ms=0,
        **world.kafka.producer_options(),
        metrics_enabled=False,
    )
    broker = broker_pids(settings)  # the brokers' pid files are in the run folder, not world's
    procs = ServeProcesses(world, group_id, log_path, servers)
    results: dict[str, dict[str, Any]] = {}
    answers: Counter[str] = Counter()
    dead_lettered: list[DeadLetter] = []
    fault_errors: list[BaseException] = []

    def run_fault(started_at: float) -> None:
        assert fault is not None
        try:
            fault(started_at, procs)
        except BaseException as exc:  # surfaced after the load
            fault_errors.append(exc)

    def collect(wanted: set[str] | None, until_s: float) -> None:
        """Read feeds (at least one poll, which waits up to 100 ms for one) until every
        ``wanted`` request is answered (None: none awaited) or ``until_s``. Returning without
        a poll when nothing was outstanding made the caller's loop spin a core between sends
        (and, in the warm-up, left the warm answers unread, so the settling check never saw
        them)."""
        while True:
            for tp, records in feeds.poll(timeout_ms=100).items():
                received = time.time()
                for record in records:
                    # Every feed is kept: one answered before its request joined ``wanted``
                    # (the sender thread appends after producing) must still count.
                    feed = decode_record(tp.topic, record)
                    if isinstance(feed, DeadLetter):  # not the bench's: another producer's
                        dead_lettered.append(feed)
                        producer.send(feed.dlq_topic, feed.to_bytes())
                        continue
                    results.setdefault(feed.request_id, {"feed": feed, "received": received})
                    answers[feed.request_id] += 1
            procs.check()
            if time.monotonic() >= until_s or (wanted and wanted <= results.keys()):
                return

    def send(user: int, tweet_ids: list[int], device: str, prefix: str) -> FeedRequest:
        request = FeedRequest(
            request_id=f"{prefix}-{uuid.uuid4().hex[:16]}",
            user_id=user,
            requested_at=dt.datetime.now(dt.UTC),
            device=device,
            candidate_tweet_ids=tweet_ids,
        )
        producer.send("feed_requests", key=str(user).encode(), value=encode(request))
        return request

    def load(rate: float, seed: int, with_fault: bool = False) -> dict[str, Any]:
        """``warmup_s`` of unmeasured load at ``rate``, then ``duration_s`` measured: the
        processes' first seconds under a new load (allocator, XGBoost and socket buffers
        growing, the aim's cost estimate adapting) are not the steady state measured."""
        n = max(1, round(rate * duration_s))
        planned = _requests(users, tweets, candidates, n, seed=seed)
        warm_load = _requests(users, tweets, candidates, round(rate * warmup_s), seed=seed + 1)
        _log(
            f"{warmup_s:g} s of unmeasured load, then {n} requests at {rate:g}/s, "
            f"{candidates} candidates each"
        )
        sent: list[FeedRequest] = []
        # When each measured request was due (the plan's time): a sender blocked by its
        # producer sends late, and a user would have waited from here.
        scheduled: list[float] = []
        measured_from: list[float] = []
        warm_due: list[tuple[str, float]] = []  # settling: each warm request and when due
        settled = threading.Event()
        warm_took: list[float] = []

        def produce() -> None:
            start, start_wall = time.monotonic(), time.time()
            if settle_max_s is None:
                specs = [*warm_load, *planned]
                n_warm = len(warm_load)
            else:
                specs, n_warm = [], 0
                warm_specs = _requests(
                    users, tweets, candidates, round(rate * (warmup_s + settle_max_s)), seed + 1
                )
                for i, spec in enumerate(warm_specs):
                    elapsed = time.monotonic() - start
                    if elapsed >= warmup_s and settled.is_set():
                        break
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    warm_due.append((send(*spec, prefix="warm").request_id, start_wall + i / rate))
                warm_took.append(time.monotonic() - start)
                start, start_wall = time.monotonic(), time.time()
            for i, spec in enumerate(specs or planned, start=-n_warm):
                delay = start + (i + n_warm) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if i < 0:
                    send(*spec, prefix="warm")
                else:
                    if not measured_from:
                        measured_from.append(time.time())
                    scheduled.append(start_wall + (i + n_warm) / rate)
                    sent.append(send(*spec, prefix="bench"))
            # Open loop: no flush per request (linger 0 sends at once). Waiting for each
            # acknowledgement made the schedule depend on the broker: a slow ack held every
            # later request back, and the late ones then went out in a burst.
            producer.flush()

        def settle_check() -> None:
            """Set ``settled`` once the warm requests due in the last window were answered
            with a median latency within the budget."""
            now = time.time()
            window = [
                (rid, due)
                for rid, due in warm_due
                if now - SETTLE_WINDOW_S - budget_s <= due <= now - budget_s
            ]
            if len(window) < rate * SETTLE_WINDOW_S / 2:
                return
            latencies = sorted(
                results[rid]["received"] - due if rid in results else now - due
                for rid, due in window
            )
            if latencies[len(latencies) // 2] <= budget_s:
                settled.set()

        budget_s = world.serving.budget_ms / 1e3
        sender = threading.Thread(target=produce, name="bench-producer", daemon=True)
        # No collections in the bench process while it loads: its live objects grow with
        # every request sent and answered (1,000-id candidate lists, decoded feeds), and each
        # full collection stopped the sending thread with the others.
        gc.collect()
        gc.disable()
        try:
            sender.start()
            before: dict[str, float] | None = None
            fault_thread: threading.Thread | None = None
            while sender.is_alive():
                collect(None, time.monotonic() + 0.2)
                if settle_max_s is not None and not settled.is_set() and not measured_from:
                    settle_check()
                if before is None and measured_from:
                    before = _scrape(world, servers)
                    cpu_before = (
                        time.process_time(),
                        process_cpu_seconds(broker),
                        _machine_ticks(),
                    )
                if with_fault and fault is not None and fault_thread is None and measured_from:
                    fault_thread = threading.Thread(
                        target=run_fault, args=(measured_from[0],), name="bench-fault", daemon=True
                    )
                    fault_thread.start()
            sender.join()
        finally:
            gc.enable()
        collect({r.request_id for r in sent}, time.monotonic() + DRAIN_TIMEOUT_S)
        if fault_thread is not None:
            fault_thread.join()
            # Answers still in flight when the fault ended (a restart takes a while).
            collect({r.request_id for r in sent}, time.monotonic() + DRAIN_TIMEOUT_S)
        if fault_errors:
            raise FeedrankError(f"the fault scenario failed: {fault_errors[0]!r}")
        after = _scrape(world, servers)
        if before is None:  # no measured request was sent (cannot happen with n >= 1)
            before, cpu_before = after, (time.process_time(), process_cpu_seconds(broker), (0, 1))
        bench_cpu = time.process_time() - cpu_before[0]
        broker_cpu = process_cpu_seconds(broker) - cpu_before[1]
        busy, total = (a - b for a, b in zip(_machine_ticks(), cpu_before[2], strict=True))
        delta = {k: after[k] - before.get(k, 0.0) for k in after}
        figures = _figures(
            [results[r.request_id] for r in sent if r.request_id in results],
            len(sent),
            measured_from[0] if measured_from else time.time(),
            delta,
        )
        scored = max(delta["scored"], 1.0)
        # How late the load generator sent each request after it was due: latency counts
        # from the send (requested_at), so a lagging generator would hide part of the wait.
        lateness_ms = [
            (r.requested_at.timestamp() - due) * 1e3 for r, due in zip(sent, scheduled, strict=True)
        ]
        figures.update(
            {
                "rate_rps": rate,
                "send_lateness_p50_ms": percentile(lateness_ms, 50),
                "send_lateness_p99_ms": percentile(lateness_ms, 99),
                "pauses": _pause_figures(delta),
                "warmup_s": warm_took[0] if warm_took else warmup_s,
                "warmup_settled": settled.is_set() if settle_max_s is not None else None,
                "answered_twice": sum(answers[r.request_id] > 1 for r in sent),
                "bench_cpu_ms_per_request": 1e3 * bench_cpu / max(len(sent), 1),
                "broker_cpu_ms_per_request": 1e3 * broker_cpu / max(len(sent), 1),
                "machine_busy_share": busy / max(total, 1),
                "serve_requests_scored": int(delta["scored"]),
                "serve_cpu_ms_per_request": 1e3 * delta["process_cpu_seconds_total"] / scored,
                "stage_cpu_ms_per_request": {
                    stage: 1e3 * delta[f"stage:{stage}"] / scored for stage in _STAGES
                },
            }
        )
        figures["stage_cpu_ms_per_request"]["other"] = figures["serve_cpu_ms_per_request"] - sum(
            figures["stage_cpu_ms_per_request"].values()
        )
        if with_fault and per_request:
            figures["per_request"] = [
                {
                    "requested_at": r.requested_at.timestamp(),
                    "scheduled_at": due,
                    "received": results[r.request_id]["received"]
                    if r.request_id in results
                    else None,
                    "answers": answers[r.request_id],
                    "degraded": r.request_id in results and results[r.request_id]["feed"].degraded,
                    "deadline_missed": r.request_id in results
                    and results[r.request_id]["feed"].deadline_missed,
                    "model_version": results[r.request_id]["feed"].model_version
                    if r.request_id in results
                    else None,
                    "served_at": results[r.request_id]["feed"].served_at.timestamp()
                    if r.request_id in results
                    else None,
                    "timings_ms": results[r.request_id]["feed"].timings_ms
                    if r.request_id in results
                    else None,
                }
                for r, due in zip(sent, scheduled, strict=True)
            ]
        return figures

    curve: list[dict[str, Any]] = []
    try:
        # Warm-up: rounds of requests from several users (so every partition, hence every
        # process, gets some) until two rounds in a row are answered within a second each:
        # processes started, the group joined and settled, caches loaded.
        _log(f"starting {servers} feedrank serve process(es) (log: {log_path})")
        ready_by = time.monotonic() + READY_TIMEOUT_S
        users_warm = _requests(users, tweets, candidates, 12, seed=5)
        quick_rounds = 0
        while quick_rounds < 2:
            if time.monotonic() > ready_by:
                raise FeedrankError(
                    f"feedrank serve did not answer in {READY_TIMEOUT_S:.0f} s; see {log_path}"
                )
            warm = {send(*spec, prefix="warm").request_id for spec in users_warm}
            producer.flush()
            collect(warm, time.monotonic() + 1.0)
            quick_rounds = quick_rounds + 1 if warm <= results.keys() else 0
            collect(warm, time.monotonic() + 2.0)  # let a slow round finish before the next
        main = load(rate_rps, seed=5, with_fault=True)
        for k, rate in enumerate(curve_rates):
            curve.append(main if rate == rate_rps else load(rate, seed=100 + 2 * k))
    finally:
        procs.stop()
        feeds.close(autocommit=False)
        producer.close(timeout=10)

    budget_ms = world.serving.budget_ms
    figures: dict[str, Any] = {
        "world": world_kind,
        "candidates": candidates,
        "duration_s": duration_s,
        "servers": servers,
        "warmup_s": warmup_s,
        **main,
        "ranked_feeds_dead_lettered": len(dead_lettered),
        "budget_ms": budget_ms,
        "heavy_ranker_cap": world.ranking.heavy_ranker_cap,
        "aim_ms": world.serving.aim_ms,
    }
    if naive_requests <= 0:  # no reference paths (the chaos scenarios): no ratios to them
        return figures
    sample = _requests(users, tweets, candidates, naive_requests, seed=5)
    figures.update(_offline_paths(world, sample))
    floor_cpu = figures["model_floor_cpu_ms"]
    for point in [figures, *curve]:
        point["serve_cpu_over_floor"] = point["serve_cpu_ms_per_request"] / floor_cpu
        # Under load the funnel prunes (aim) or skips (budget) the heavy ranker, which lowers
        # the ratio above; this one puts the model floor back in place of what the heavy
        # stage cost: the serve CPU of a request whose every candidate is heavy-ranked, over
        # the model alone.
        overhead = point["serve_cpu_ms_per_request"] - point["stage_cpu_ms_per_request"]["heavy"]
        point["non_model_cpu_ms_per_request"] = overhead
        point["full_heavy_cpu_over_floor"] = (overhead + floor_cpu) / floor_cpu
        point["p99_over_floor"] = point["p99_ms"] / figures["model_floor_p50_ms"]
    if curve:
        figures["load_curve"] = [
            {k: v for k, v in point.items() if k != "load_curve"} for point in curve
        ]
        within = [p["rate_rps"] for p in curve if p["p99_ms"] <= budget_ms]
        figures["max_rate_p99_within_budget_rps"] = max(within, default=None)
    return figures


def _figures(
    answered: list[dict[str, Any]], sent: int, first_sent: float, delta: dict[str, float]
) -> dict[str, Any]:
    """Latency, throughput, misses and degraded share of one load phase's answers."""
    latencies_ms = [(a["received"] - a["feed"].requested_at.timestamp()) * 1e3 for a in answered]

    # Split of the end-to-end time: until the server handed the feed to its producer
    # (queueing + scoring), and from there to the bench's consumer (acks + fetch).
    def stamp(a: dict[str, Any], key: str) -> float:
        return getattr(a["feed"], key).timestamp()

    server_ms = [(stamp(a, "served_at") - stamp(a, "requested_at")) * 1e3 for a in answered]
    delivery_ms = [(a["received"] - stamp(a, "served_at")) * 1e3 for a in answered]
    last = max((a["received"] for a in answered), default=first_sent)
    degraded = sum(a["feed"].degraded for a in answered)
    stage_ms = {
        stage: percentile(
            [a["feed"].timings_ms[stage] for a in answered if stage in a["feed"].timings_ms],
            50,
        )
        for stage in ("hydrate", "light", "heavy", "rank", "total")
    }
    # Where each answer's time went: the server's waits before scoring (feed timings_ms),
    # its scoring, then delivery (producer, broker, the bench's fetch).
    parts = {
        **{
            phase: [a["feed"].timings_ms.get(phase, float("nan")) for a in answered]
            for phase in _WAIT_PHASES
        },
        "scoring": [a["feed"].timings_ms.get("total", float("nan")) for a in answered],
        "delivery": delivery_ms,
    }
    slowest = np.argsort(latencies_ms)[len(latencies_ms) - max(len(latencies_ms) // 100, 1) :]
    return {
        "requests": sent,
        "answered": len(answered),
        "unanswered": sent - len(answered),
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms, default=float("nan")),
        "throughput_rps": len(answered) / max(last - first_sent, 1e-9),
        "deadline_misses": sum(a["feed"].deadline_missed for a in answered),
        "degraded": degraded / max(len(answered), 1),
        "degraded_count": degraded,
        "server_stage_p50_ms": stage_ms,
        "requested_to_served_p50_ms": percentile(server_ms, 50),
        "requested_to_served_p99_ms": percentile(server_ms, 99),
        "served_to_consumed_p50_ms": percentile(delivery_ms, 50),
        "served_to_consumed_p99_ms": percentile(delivery_ms, 99),
        # p50 / p99 of each part, and its mean over the slowest 1 % of answers (the tail).
        "parts_ms": {
            part: {
                "p50": percentile(values, 50),
                "p99": percentile(values, 99),
                "slowest_1pct_mean": float(np.nanmean(np.asarray(values)[slowest]))
                if len(answered)
                else float("nan"),
            }
            for part, values in parts.items()
        },
        # From the servers' /metrics over the measured load: candidates the heavy ranker
        # scored per heavy-ranked request, and requests pruned below the cap for aim_ms.
        "heavy_rows_mean": delta["feedrank_serving_heavy_rows_sum"]
        / max(delta["feedrank_serving_heavy_rows_count"], 1.0),
        "heavy_pruned_for_aim": int(delta["feedrank_serving_heavy_pruned_for_aim_total"]),
    }


def _offline_paths(world: Settings, sample: list[tuple[int, list[int], str]]) -> dict[str, Any]:
    """Naive path, fast hydration and the model floor, timed on the same requests."""
    import xgboost as xgb

    from feedrank.ranking import weighted_score
    from serving.hydration import FeatureHydrator, online_features_matrix
    from serving.scorer import load_serving_model

    model = load_serving_model("champion", world)
    hydrator = FeatureHydrator(world)
    now = time.time()
    naive_ms, fast_ms, floor_ms = [], [], []
    _log(f"timing the naive path on {len(sample)} requests")
    for user, tweet_ids, device in sample:
        started = time.perf_counter()
        X = online_features_matrix(hydrator.store, user, tweet_ids, now, device)
        dmatrix = xgb.DMatrix(X, missing=np.nan, feature_names=list(model.features))
        probs = {h: b.predict(dmatrix) for h, b in model.boosters.items()}
        weighted_score(probs, model.weights)
        naive_ms.append((time.perf_counter() - started) * 1e3)
    for user, tweet_ids, device in sample:
        started = time.perf_counter()
        X = hydrator.hydrate(user, tweet_ids, now, device)
        fast_ms.append((time.perf_counter() - started) * 1e3)
    ready = hydrator.hydrate(*sample[0][:2], now, sample[0][2])
    model.predict_heads(ready)
    # The reference beside it, interleaved call by call: one XGBoost call per head instead
    # of the joint booster serving scores with (the same floats; see joint_booster).
    per_head = dataclasses.replace(model, joint=None)
    floor_cpu_ms, per_head_cpu_ms = [], []
    for _ in range(FLOOR_CALLS):
        started, cpu = time.perf_counter(), time.process_time()
        model.predict_heads(ready)
        floor_ms.append((time.perf_counter() - started) * 1e3)
        floor_cpu_ms.append((time.process_time() - cpu) * 1e3)
        cpu = time.process_time()
        per_head.predict_heads(ready)
        per_head_cpu_ms.append((time.process_time() - cpu) * 1e3)
    return {
        "naive_p50_ms": percentile(naive_ms, 50),
        "naive_requests": len(naive_ms),
        "fast_hydrate_p50_ms": percentile(fast_ms, 50),
        "model_floor_p50_ms": percentile(floor_ms, 50),
        # CPU of the same calls (the load of other programs inflates it less than wall time).
        "model_floor_cpu_ms": percentile(floor_cpu_ms, 50),
        "model_floor_rows": len(ready),
        "model_joint_heads": model.joint is not None,
        "model_floor_per_head_cpu_ms": percentile(per_head_cpu_ms, 50),
        "model_version": model.version,
        "model_trees_per_head": int(model.boosters[HEADS[0]].num_boosted_rounds()),
    }


def print_table(figures: dict[str, Any]) -> None:
    """The figures as tables on stdout: the main rate, then the load curve if measured."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"serving: {figures['candidates']} candidates, "
            f"{figures['rate_rps']:g} req/s for {figures['duration_s']:g} s, "
            f"{figures['servers']} serve process(es) "
            f"({figures['world']} world, budget {figures['budget_ms']} ms)"
        )
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    floor = figures["model_floor_p50_ms"]
    stages = figures["stage_cpu_ms_per_request"]
    rows = [
        (
            "end-to-end p50 (ms)",
            f"{figures['p50_ms']:.1f} ({figures['p50_ms'] / floor:.1f}× floor)",
        ),
        (
            "end-to-end p99 (ms)",
            f"{figures['p99_ms']:.1f} ({figures['p99_over_floor']:.1f}× floor)",
        ),
        ("sustained throughput (req/s)", f"{figures['throughput_rps']:.1f}"),
        ("answered / sent", f"{figures['answered']} / {figures['requests']}"),
        ("deadline misses", str(figures["deadline_misses"])),
        ("degraded share", f"{figures['degraded']:.1%}"),
        (
            f"heavy-ranked candidates per request, mean (cap {figures['heavy_ranker_cap']})",
            f"{figures['heavy_rows_mean']:.0f}",
        ),
        (
            f"pruned below the cap for the {figures['aim_ms']} ms aim",
            f"{figures['heavy_pruned_for_aim']} of {figures['answered']}",
        ),
        (
            "serve CPU per request (ms), all processes",
            f"{figures['serve_cpu_ms_per_request']:.1f} "
            f"({figures['serve_cpu_over_floor']:.2f}× floor CPU)",
        ),
        (
            "serve CPU outside the model per request (ms); with the floor, over the floor",
            f"{figures['non_model_cpu_ms_per_request']:.1f}; "
            f"{figures['full_heavy_cpu_over_floor']:.2f}×",
        ),
        (
            "  by stage: " + " / ".join(stages),
            " / ".join(f"{v:.1f}" for v in stages.values()),
        ),
        (
            "bench / broker CPU per request (ms)",
            f"{figures['bench_cpu_ms_per_request']:.1f} / "
            f"{figures['broker_cpu_ms_per_request']:.1f}",
        ),
        ("machine busy (all programs)", f"{figures['machine_busy_share']:.0%}"),
        ("naive path p50 (ms): get_online_features + DMatrix", f"{figures['naive_p50_ms']:.1f}"),
        ("fast hydration p50 (ms)", f"{figures['fast_hydrate_p50_ms']:.1f}"),
        (
            f"model floor p50 (ms): inplace_predict, all heads, {figures['model_floor_rows']} rows",
            f"{floor:.1f} wall / {figures['model_floor_cpu_ms']:.1f} CPU",
        ),
        (
            "  the same, one XGBoost call per head (CPU ms), "
            + (
                "the joint booster's reference" if figures.get("model_joint_heads") else "as served"
            ),
            f"{figures.get('model_floor_per_head_cpu_ms', float('nan')):.1f}",
        ),
    ]
    parts = figures.get("parts_ms")
    if parts:
        rows.append(
            (
                "p99 ms by part: " + " / ".join(parts) + "; send lateness",
                " / ".join(f"{v['p99']:.1f}" for v in parts.values())
                + f"; {figures['send_lateness_p99_ms']:.1f}",
            )
        )
        rows.append(
            (
                "  mean over the slowest 1 % of answers",
                " / ".join(f"{v['slowest_1pct_mean']:.1f}" for v in parts.values()),
            )
        )
    for generation, pause in sorted(figures.get("pauses", {}).get("gc_pause", {}).items()):
        rows.append(
            (
                f"GC generation {generation}: collections, total ms, over 10 ms",
                f"{pause['count']:.0f}, {pause['total_ms']:.0f}, {pause['over_10ms']:.0f}",
            )
        )
    for name, value in rows:
        table.add_row(name, value)
    console = Console()
    console.print(table)
    curve = figures.get("load_curve")
    if not curve:
        return
    table = Table(title="load curve (same serve processes, one rate after the other)")
    columns = ("req/s", "p50 ms", "p99 ms", "answered/s", "misses", "degraded", "CPU ms/req")
    for column in (*columns, "heavy rows"):
        table.add_column(column, justify="right")
    for point in curve:
        table.add_row(
            f"{point['rate_rps']:g}",
            f"{point['p50_ms']:.1f}",
            f"{point['p99_ms']:.1f}",
            f"{point['throughput_rps']:.1f}",
            str(point["deadline_misses"]),
            str(point["degraded_count"]),
            f"{point['serve_cpu_ms_per_request']:.1f}",
            f"{point['heavy_rows_mean']:.0f}",
        )
    console.print(table)
    best = figures.get("max_rate_p99_within_budget_rps")
    console.print(
        f"highest rate with p99 ≤ {figures['budget_ms']} ms: "
        + (f"{best:g} req/s" if best is not None else "none of the rates")
    )


def plot_curve(figures: dict[str, Any], path: Path) -> None:
    """The load curve as a PNG: latency, misses and degraded, CPU per request by stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = figures["load_curve"]
    rates = [p["rate_rps"] for p in curve]
    fig, (lat, bad, cpu) = plt.subplots(1, 3, figsize=(15, 4.5))
    lat.plot(rates, [p["p50_ms"] for p in curve], "o-", label="p50")
    lat.plot(rates, [p["p99_ms"] for p in curve], "o-", label="p99")
    lat.axhline(figures["budget_ms"], color="red", ls="--", lw=1, label="deadline")
    lat.axhline(figures["model_floor_p50_ms"], color="grey", ls=":", label="model floor")
    lat.set(xlabel="requests / s", ylabel="ms, request produced → feed consumed", yscale="log")
    lat.set_title("end-to-end latency")
    lat.legend()
    bad.plot(rates, [p["deadline_misses"] for p in curve], "o-", label="deadline misses")
    bad.plot(rates, [p["degraded_count"] for p in curve], "s-", label="degraded")
    bad.plot(rates, [p["unanswered"] for p in curve], "^-", label="unanswered")
    bad.set(xlabel="requests / s", ylabel="requests", title="misses and degraded")
    bad.legend()
    bottom = np.zeros(len(curve))
    for stage in curve[0]["stage_cpu_ms_per_request"]:
        values = np.array([max(p["stage_cpu_ms_per_request"][stage], 0.0) for p in curve])
        cpu.bar([str(r) for r in rates], values, bottom=bottom, label=stage)
        bottom += values
    cpu.axhline(figures["model_floor_cpu_ms"], color="black", ls=":", label="model floor CPU")
    cpu.set(xlabel="requests / s", ylabel="serve CPU ms per scored request")
    cpu.set_title("CPU per request by stage")
    cpu.legend(fontsize=8)
    fig.suptitle(
        f"feedrank bench serving: {figures['candidates']} candidates, {figures['servers']} serve "
        f"processes, {figures['duration_s']:g} s per rate ({figures['world']} world)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
