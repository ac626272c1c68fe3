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

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from feedrank.config import HEADS, PathsConfig, Settings, Topics
from feedrank.errors import FeedrankError
from feedrank.schemas import DEVICES, DeadLetter, FeedRequest, decode_record, encode
from feedrank.stats import percentile

SYNTHETIC_USERS, SYNTHETIC_TWEETS = 2_000, 20_000
SYNTHETIC_START = dt.date(2026, 11, 1)
READY_TIMEOUT_S = 300.0
BENCH_MODEL_TREES = 100
DRAIN_TIMEOUT_S = 60.0


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
    from jobs.train import distill_light_ranker

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
        bootstrap_servers=settings.kafka.bootstrap_servers,
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
        bootstrap_servers=settings.kafka.bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
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
        "FEEDRANK_SERVING__METRICS_PORT": str(world.serving.metrics_port + index),
        "FEEDRANK_SERVING__BUDGET_MS": str(world.serving.budget_ms),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "feedrank"), "serve"],
            env=env,
            stdout=log,
            stderr=log,
        )


# ------------------------------------------------------------------ the run

_HEAVY_SAMPLES = (
    "feedrank_serving_heavy_rows_sum",
    "feedrank_serving_heavy_rows_count",
    "feedrank_serving_heavy_pruned_for_aim_total",
)


def _scrape_heavy(world: Settings, servers: int) -> dict[str, float]:
    """The servers' heavy-ranker counters, summed (from their Prometheus ``/metrics``)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    totals = dict.fromkeys(_HEAVY_SAMPLES, 0.0)
    for index in range(servers):
        url = f"http://127.0.0.1:{world.serving.metrics_port + index}/metrics"
        with urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in totals:
                    totals[sample.name] += sample.value
    return totals


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
) -> dict[str, Any]:
    """Run the serving benchmark; returns the figures (see the module docstring).

    ``servers`` ``feedrank serve`` processes share the bench's consumer group (scale-out: with
    one process the GIL-bound loop, not the cores, caps the throughput).
    """
    from kafka import KafkaProducer

    world, world_kind, users, tweets = prepare_world(settings)
    if not len(users) or not len(tweets):
        raise FeedrankError("the bench world has no users or tweets")
    group_id = f"feedrank-bench-{uuid.uuid4().hex[:8]}"
    _group_at_end(world, group_id)
    n = max(1, round(rate_rps * duration_s))
    planned = _requests(users, tweets, candidates, n, seed=5)
    log_path = world.paths.logs / "bench-serving.out"
    feeds = _feeds_consumer(world)
    producer = KafkaProducer(bootstrap_servers=world.kafka.bootstrap_servers, linger_ms=0)
    procs = [_start_server(world, group_id, log_path, i) for i in range(servers)]
    results: dict[str, dict[str, Any]] = {}
    dead_lettered: list[DeadLetter] = []

    def collect(wanted: set[str], until_s: float) -> None:
        while time.monotonic() < until_s and not wanted <= results.keys():
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
            for server in procs:
                if server.poll() is not None:
                    raise FeedrankError(
                        f"feedrank serve exited ({server.returncode}); see {log_path}"
                    )

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

    try:
        # Warm-up: rounds of requests from several users (so every partition, hence every
        # process, gets some) until two rounds in a row are answered within a second each:
        # processes started, the group joined and settled, caches loaded.
        _log(f"starting {servers} feedrank serve process(es) (log: {log_path})")
        ready_by = time.monotonic() + READY_TIMEOUT_S
        users_warm = planned[:12]
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
        # Then load at the target rate, unmeasured for ``warmup_s``: the processes' first
        # seconds under load (allocator, XGBoost and socket buffers growing) are not the
        # steady state the figures describe.
        warm_load = _requests(users, tweets, candidates, round(rate_rps * warmup_s), seed=6)
        _log(
            f"warm; {warmup_s:g} s of unmeasured load, then {n} requests at {rate_rps:g}/s, "
            f"{candidates} candidates each"
        )

        sent: list[FeedRequest] = []
        measured_from: list[float] = []

        def produce() -> None:
            start = time.monotonic()
            for i, spec in enumerate([*warm_load, *planned]):
                delay = start + i / rate_rps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if i < len(warm_load):
                    send(*spec, prefix="warm")
                else:
                    if not measured_from:
                        measured_from.append(time.time())
                    sent.append(send(*spec, prefix="bench"))
                producer.flush()

        sender = threading.Thread(target=produce, name="bench-producer", daemon=True)
        sender.start()
        heavy_before: dict[str, float] | None = None
        while sender.is_alive():
            collect({r.request_id for r in sent}, time.monotonic() + 0.2)
            if heavy_before is None and measured_from:
                heavy_before = _scrape_heavy(world, servers)
        sender.join()
        collect({r.request_id for r in sent}, time.monotonic() + DRAIN_TIMEOUT_S)
        heavy_after = _scrape_heavy(world, servers)
        heavy = {k: heavy_after[k] - (heavy_before or {}).get(k, 0.0) for k in heavy_after}
    finally:
        for server in procs:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
        for server in procs:
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
        feeds.close(autocommit=False)
        producer.close(timeout=10)

    answered = [results[r.request_id] for r in sent if r.request_id in results]
    latencies_ms = [(a["received"] - a["feed"].requested_at.timestamp()) * 1e3 for a in answered]

    # Split of the end-to-end time: until the server handed the feed to its producer
    # (queueing + scoring), and from there to the bench's consumer (acks + fetch).
    def stamp(a: dict[str, Any], key: str) -> float:
        return getattr(a["feed"], key).timestamp()

    server_ms = [(stamp(a, "served_at") - stamp(a, "requested_at")) * 1e3 for a in answered]
    delivery_ms = [(a["received"] - stamp(a, "served_at")) * 1e3 for a in answered]
    first_sent = measured_from[0] if measured_from else time.time()
    last = max((a["received"] for a in answered), default=first_sent)
    degraded = sum(a["feed"].degraded for a in answered)
    stage_ms = {
        stage: percentile(
            [a["feed"].timings_ms[stage] for a in answered if stage in a["feed"].timings_ms],
            50,
        )
        for stage in ("hydrate", "light", "heavy", "rank", "total")
    }
    figures: dict[str, Any] = {
        "world": world_kind,
        "candidates": candidates,
        "rate_rps": rate_rps,
        "duration_s": duration_s,
        "servers": servers,
        "warmup_s": warmup_s,
        "requests": len(sent),
        "answered": len(answered),
        "unanswered": len(sent) - len(answered),
        "ranked_feeds_dead_lettered": len(dead_lettered),
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms, default=float("nan")),
        "throughput_rps": len(answered) / max(last - first_sent, 1e-9),
        "deadline_misses": sum(a["feed"].deadline_missed for a in answered),
        "degraded": degraded / max(len(answered), 1),
        "degraded_count": degraded,
        "budget_ms": world.serving.budget_ms,
        "server_stage_p50_ms": stage_ms,
        "requested_to_served_p50_ms": percentile(server_ms, 50),
        "requested_to_served_p99_ms": percentile(server_ms, 99),
        "served_to_consumed_p50_ms": percentile(delivery_ms, 50),
        # From the servers' /metrics over the measured load: candidates the heavy ranker
        # scored per heavy-ranked request, and requests pruned below the cap for aim_ms.
        "heavy_rows_mean": heavy["feedrank_serving_heavy_rows_sum"]
        / max(heavy["feedrank_serving_heavy_rows_count"], 1.0),
        "heavy_pruned_for_aim": int(heavy["feedrank_serving_heavy_pruned_for_aim_total"]),
        "heavy_ranker_cap": world.ranking.heavy_ranker_cap,
        "aim_ms": world.serving.aim_ms,
    }
    figures.update(_offline_paths(world, planned[:naive_requests]))
    return figures


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
    for _ in range(30):
        started = time.perf_counter()
        model.predict_heads(ready)
        floor_ms.append((time.perf_counter() - started) * 1e3)
    return {
        "naive_p50_ms": percentile(naive_ms, 50),
        "naive_requests": len(naive_ms),
        "fast_hydrate_p50_ms": percentile(fast_ms, 50),
        "model_floor_p50_ms": percentile(floor_ms, 50),
        "model_version": model.version,
        "model_trees_per_head": int(model.boosters[HEADS[0]].num_boosted_rounds()),
    }


def print_table(figures: dict[str, Any]) -> None:
    """The figures as one table on stdout."""
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
    rows = [
        ("end-to-end p50 (ms)", f"{figures['p50_ms']:.1f}"),
        ("end-to-end p99 (ms)", f"{figures['p99_ms']:.1f}"),
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
        ("naive path p50 (ms): get_online_features + DMatrix", f"{figures['naive_p50_ms']:.1f}"),
        ("fast hydration p50 (ms)", f"{figures['fast_hydrate_p50_ms']:.1f}"),
        (
            "model floor p50 (ms): inplace_predict, all heads",
            f"{figures['model_floor_p50_ms']:.1f}",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
