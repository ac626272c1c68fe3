"""``feedrank bench capacity``: what one broker and one Redis do per unit of traffic here, and
the plan those figures give for a production load (docs/capacity.md).

Measured, on the real services of the run folder's profile:

* **Kafka**: the three messages of one feed request (the request with its candidates, the
  ranked feed, the served impressions), encoded by :mod:`feedrank.schemas` exactly as serving
  sends them, produced with ``acks=all`` to a topic of its own and consumed back. Reported as
  bytes per request, wall MB/s, and CPU seconds per MB of the broker (from ``/proc``), the
  producer and the consumer: CPU per MB is what a busy machine inflates least.
* **Redis**: the online store of the synthetic feature world (the hydration bench's,
  :func:`feedrank.synthetic_features.build_synthetic_store`) materialized into redis-server;
  bytes per entity key from ``MEMORY USAGE`` over every key, grouped by the feature views a
  key holds (users, authors, tweets, pairs).

:func:`capacity_plan` turns these, the serving CPU-ms per request and Spark's rows per
core-second into cores, brokers, partitions and memory for a target load.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import resource
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import typer

from feedrank.config import Settings, get_settings, redis_client_kwargs

MB = 1e6
# The plan's world, per entity of the online store (assumptions, not measurements; docs/capacity.md
# says why): daily users, active authors, tweets inside the candidate window, and the pairs with
# activity inside the affinity views' windows.
PLAN_ENTITIES: dict[str, float] = {
    "user": 3e8,
    "author": 5e7,
    "tweet": 1e9,
    "user_author": 3e8 * 50,
    "user_topic": 3e8 * 10,
}
PLAN_IMPRESSIONS_PER_RANKING = 30  # viewed impressions per feed (the demo's world: 28)
# The share of a core planned busy at peak: headroom for GC, spikes and rebalances.
CORE_UTILISATION = 0.6


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def request_messages(candidates: int, feed_size: int, sampled: int) -> dict[str, bytes]:
    """One feed request's three messages, encoded as serving encodes them.

    Args:
        candidates: candidate tweets in the request.
        feed_size: items in the ranked feed.
        sampled: impressions of the feed that carry their feature vector.
    """
    import numpy as np

    from feedrank.feature_spec import model_features
    from feedrank.schemas import (
        FeedRequest,
        Impression,
        RankedFeed,
        RankedItem,
        ServedImpressions,
        encode,
    )

    rng = np.random.default_rng(0)
    now = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)
    tweets = rng.choice(10**12, size=candidates, replace=False) + 10**12
    request_id = uuid.uuid4().hex
    request = FeedRequest(
        request_id=request_id,
        user_id=123456,
        requested_at=now,
        device="mobile",
        candidate_tweet_ids=[int(t) for t in tweets],
    )
    items = [
        RankedItem(tweet_id=int(t), author_id=int(t) % 99991, score=float(s), position=i)
        for i, (t, s) in enumerate(zip(tweets[:feed_size], rng.random(feed_size), strict=True))
    ]
    feed = RankedFeed(
        request_id=request_id,
        user_id=123456,
        model_version="v20261205-0123456789ab",
        degraded=False,
        items=items,
        requested_at=now,
        served_at=now,
        deadline_at=now + dt.timedelta(milliseconds=300),
        timings_ms={"hydrate": 2.1, "light": 1.0, "heavy": 9.5, "total": 14.2},
    )
    n_features = len(model_features())
    impressions = [
        Impression(
            request_id=request_id,
            user_id=123456,
            tweet_id=item.tweet_id,
            author_id=item.author_id,
            position=item.position,
            served_at=now,
            model_version=feed.model_version,
            arm="treatment",
            score=item.score,
            features=rng.random(n_features).round(6).tolist() if i < sampled else None,
        )
        for i, item in enumerate(items)
    ]
    served = ServedImpressions(impressions=impressions)
    return {
        "feed_requests": encode(request),
        "ranked_feeds": encode(feed),
        "impressions": encode(served),
    }


def kafka_bench(settings: Settings, requests: int, messages: dict[str, bytes]) -> dict[str, Any]:
    """Produce ``requests`` × each message with acks=all, consume them back; CPU and MB/s."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from feedrank.services.kafka_broker import broker_pids as owned_brokers
    from feedrank.services.process import process_cpu_seconds as _process_cpu_s

    # CPU of every broker node (the cluster profile's replicas included), when we own them.
    broker_pids = owned_brokers(settings) or None
    topic = f"bench_capacity_{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**settings.kafka.client_options("admin"))
    replicas = settings.kafka.replication_factor
    admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=replicas)])
    total_bytes = requests * sum(len(m) for m in messages.values())
    out: dict[str, Any] = {"topic_partitions": 6, "replicas": replicas, "mb": total_bytes / MB}
    try:
        producer = KafkaProducer(
            **settings.kafka.client_options("admin"),
            **settings.kafka.producer_options(),
            linger_ms=5,
            max_request_size=4 * 2**20,
        )
        broker0 = _process_cpu_s(broker_pids) if broker_pids else None
        cpu0, wall0 = _self_cpu_s(), time.monotonic()
        for i in range(requests):
            key = str(i % 5000).encode()
            for value in messages.values():
                producer.send(topic, key=key, value=value)
        producer.flush()
        produce_wall, produce_cpu = time.monotonic() - wall0, _self_cpu_s() - cpu0
        broker_in = _process_cpu_s(broker_pids) - broker0 if broker_pids else None
        producer.close()
        consumer = KafkaConsumer(
            topic,
            **settings.kafka.client_options("admin"),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_bytes=50 * 2**20,
            max_partition_fetch_bytes=8 * 2**20,
        )
        expected, seen, consumed_bytes = requests * len(messages), 0, 0
        broker1 = _process_cpu_s(broker_pids) if broker_pids else None
        cpu0, wall0 = _self_cpu_s(), time.monotonic()
        deadline = wall0 + 300
        while seen < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                seen += len(records)
                consumed_bytes += sum(len(r.value) for r in records)
        consume_wall, consume_cpu = time.monotonic() - wall0, _self_cpu_s() - cpu0
        broker_out = _process_cpu_s(broker_pids) - broker1 if broker_pids else None
        consumer.close()
    finally:
        admin.delete_topics([topic])
        admin.close()
    if seen < expected:
        raise RuntimeError(f"consumed {seen} of {expected} messages within 300 s")
    mb = total_bytes / MB
    out.update(
        produce_mb_s=mb / produce_wall,
        consume_mb_s=(consumed_bytes / MB) / consume_wall,
        producer_cpu_s_per_mb=produce_cpu / mb,
        consumer_cpu_s_per_mb=consume_cpu / mb,
        broker_in_cpu_s_per_mb=broker_in / mb if broker_in is not None else None,
        broker_out_cpu_s_per_mb=broker_out / mb if broker_out is not None else None,
    )
    return out


def redis_bench(settings: Settings) -> dict[str, Any]:
    """Bytes per entity key of the synthetic online store in redis-server, by views held."""
    import numpy as np
    import redis

    from feedrank.config import FeastConfig, PathsConfig
    from feedrank.feature_spec import VIEWS
    from feedrank.synthetic_features import build_synthetic_store

    home = settings.paths.home / "bench" / "capacity"
    store = settings.model_copy(
        update={"paths": PathsConfig(home=home), "feast": FeastConfig(online_store="redis")}
    )
    client = redis.Redis(**redis_client_kwargs(settings))
    client.flushdb()
    users, authors, tweets = 2000, 300, 6000
    build_synthetic_store(
        store, start=dt.date(2026, 11, 1), users=users, authors=authors, tweets=tweets
    )
    by_kind: dict[str, list[int]] = defaultdict(list)
    for key in client.scan_iter(count=1000):
        if client.type(key) != b"hash":
            continue
        views = [f.decode().split(":", 1)[1] for f in client.hkeys(key) if f.startswith(b"_ts:")]
        # Feast keeps one hash per entity key, a field group per view: the views name the entity.
        kind = VIEWS[views[0]].entity if views and views[0] in VIEWS else "other"
        by_kind[kind].append(int(client.memory_usage(key, samples=0)))
    info = client.info("memory")
    client.close()
    return {
        "entities": {"user": users, "author": authors, "tweet": tweets},
        "used_memory_bytes": int(info["used_memory"]),
        "keys": {kind: len(sizes) for kind, sizes in by_kind.items()},
        "bytes_per_key": {kind: float(np.mean(sizes)) for kind, sizes in by_kind.items()},
    }


def serve_cores(
    requests_per_s: float,
    serve_cpu_ms_per_request: float,
    core_utilisation: float = CORE_UTILISATION,
) -> float:
    """Cores the serve processes need to answer ``requests_per_s``, each core planned busy
    ``core_utilisation`` of the time (the Helm chart sizes one serve pod with it)."""
    return requests_per_s * serve_cpu_ms_per_request / 1000 / core_utilisation


def spark_cores(rows: float, rows_per_core_s: float, window_s: float) -> int:
    """Executor cores that build ``rows`` training-data rows within ``window_s`` seconds (the
    Helm chart sizes the SparkApplications' executors with it)."""
    return math.ceil(rows / rows_per_core_s / window_s)


def capacity_plan(
    *,
    rankings_per_day: float,
    peak_factor: float,
    serve_cpu_ms_per_request: float,
    bytes_per_request: float,
    broker_cpu_s_per_mb: float,
    bytes_per_entity: dict[str, float],
    entities: dict[str, float],
    spark_rows_per_core_s: float,
    training_rows_per_day: float,
    core_utilisation: float = CORE_UTILISATION,
) -> dict[str, Any]:
    """Resources for a load, from measured unit costs.

    Args:
        rankings_per_day: feed requests ranked per day.
        peak_factor: peak over average request rate.
        serve_cpu_ms_per_request: serving CPU per request (all stages, one core).
        bytes_per_request: Kafka bytes of one request's messages (request, feed, impressions).
        broker_cpu_s_per_mb: broker CPU per MB written and read once (replication adds
            one more write per extra replica).
        bytes_per_entity: online-store bytes per entity kind.
        entities: entity counts per kind.
        spark_rows_per_core_s: training-data rows per core-second.
        training_rows_per_day: impression rows the nightly job joins.
        core_utilisation: the share of a core planned busy at peak (headroom for GC, spikes).
    """
    avg_rps = rankings_per_day / 86_400
    peak_rps = avg_rps * peak_factor
    mb_s = peak_rps * bytes_per_request / MB
    replication = 3
    broker_cores = mb_s * broker_cpu_s_per_mb * replication / core_utilisation
    redis_bytes = {k: bytes_per_entity[k] * n for k, n in entities.items()}
    nightly_core_s = training_rows_per_day / spark_rows_per_core_s
    return {
        "average_rps": avg_rps,
        "peak_rps": peak_rps,
        "serve_cores_at_peak": serve_cores(peak_rps, serve_cpu_ms_per_request, core_utilisation),
        "kafka_mb_s_at_peak": mb_s,
        "kafka_broker_cores_at_peak_rf3": broker_cores,
        "kafka_ingress_tb_per_day_rf3": avg_rps * bytes_per_request * 86_400 * replication / 1e12,
        "redis_gb": sum(redis_bytes.values()) / 1e9,
        "redis_gb_by_entity": {k: b / 1e9 for k, b in redis_bytes.items()},
        "nightly_training_data_core_hours": nightly_core_s / 3600,
        "nightly_executors_for_2h": spark_cores(training_rows_per_day, spark_rows_per_core_s, 7200),
    }


def run_bench(settings: Settings, requests: int, json_path: Path | None) -> dict[str, Any]:
    """Measure Kafka and Redis on the run folder's services (started and stopped here when
    they were not running) and print one table."""
    from rich.console import Console
    from rich.table import Table

    from feedrank.services import kafka_down, kafka_up, redis_down, redis_up

    console = Console(stderr=True)
    messages = request_messages(candidates=1000, feed_size=50, sampled=5)
    result: dict[str, Any] = {"bytes_per_request": {k: len(v) for k, v in messages.items()}}
    started_kafka = kafka_up(settings)
    try:
        with console.status(f"Kafka: {requests} requests × 3 messages, acks=all"):
            result["kafka"] = kafka_bench(settings, requests, messages)
    finally:
        if started_kafka:
            kafka_down(settings)
    started_redis = redis_up(settings)
    try:
        with console.status("Redis: synthetic online store, bytes per key"):
            result["redis"] = redis_bench(settings)
    finally:
        if started_redis:
            redis_down(settings)
    table = Table(title="capacity: unit costs measured here")
    table.add_column("what")
    table.add_column("figure", justify="right")
    for name, size in result["bytes_per_request"].items():
        table.add_row(f"bytes per request: {name}", f"{size:,}")
    for name, value in result["kafka"].items():
        table.add_row(f"kafka {name}", f"{value:.3f}" if isinstance(value, float) else str(value))
    for kind, size in result["redis"]["bytes_per_key"].items():
        table.add_row(
            f"redis bytes per key: {kind} ({result['redis']['keys'][kind]} keys)", f"{size:,.0f}"
        )
    Console().print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``feedrank bench capacity``."""

    @bench_app.command("capacity")
    def bench_capacity(
        requests: int = typer.Option(2000, min=10, help="Feed requests' messages to send."),
        serve_cpu_ms: float | None = typer.Option(
            None, min=0.01, help="Serving CPU-ms per request (from `bench serving`), for the plan."
        ),
        spark_rows_per_core_s: float | None = typer.Option(
            None, min=1, help="Training-data rows per core-second (from `bench training-data`)."
        ),
        rankings_per_day: float = typer.Option(5e9, min=1, help="The plan's load."),
        peak_factor: float = typer.Option(2.5, min=1, help="Peak over average."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the figures here."),
    ) -> None:
        """Unit costs of Kafka (CPU per MB, bytes per request) and Redis (bytes per entity),
        and with --serve-cpu-ms and --spark-rows-per-core-s the capacity plan they give."""
        settings = get_settings()
        result = run_bench(settings, requests, None)
        if serve_cpu_ms is not None and spark_rows_per_core_s is not None:
            redis = result["redis"]
            result["plan"] = capacity_plan(
                rankings_per_day=rankings_per_day,
                peak_factor=peak_factor,
                serve_cpu_ms_per_request=serve_cpu_ms,
                bytes_per_request=sum(result["bytes_per_request"].values()),
                broker_cpu_s_per_mb=result["kafka"]["broker_in_cpu_s_per_mb"]
                + result["kafka"]["broker_out_cpu_s_per_mb"],
                bytes_per_entity=redis["bytes_per_key"],
                entities=PLAN_ENTITIES,
                spark_rows_per_core_s=spark_rows_per_core_s,
                training_rows_per_day=rankings_per_day * PLAN_IMPRESSIONS_PER_RANKING,
            )
            typer.echo(json.dumps(result["plan"], indent=2))
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(result, indent=2) + "\n")
