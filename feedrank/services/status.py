"""``make status``: every service feedrank can run in this run folder, its pid and whether it
answers now (Kafka, Redis, the Spark cluster, Airflow, ``feedrank serve``, ``stream-features``)."""

from __future__ import annotations

from feedrank.config import Settings
from feedrank.readiness import kafka_ready, redis_ready
from feedrank.services.airflow_standalone import airflow_pid, airflow_ready, airflow_url
from feedrank.services.kafka_broker import kafka_config
from feedrank.services.process import feedrank_processes, http_answers, owned_pid, resolve
from feedrank.services.redis_server import redis_dir
from feedrank.services.spark_cluster import (
    spark_alive_workers,
    spark_dir,
    spark_master_url,
    spark_processes,
)


def status(settings: Settings | None = None) -> dict[str, dict[str, object]]:
    """Each service's pid (ours, or None), whether it answers now, and its endpoint.

    ``serve`` is ready when its ``/metrics`` endpoint answers; ``stream-features`` when its
    process runs. Several ``feedrank serve`` processes are listed as ``serve``, ``serve-2``….
    """
    settings = resolve(settings)
    spark_marker = str(spark_dir(settings) / "spark-defaults.conf")
    report: dict[str, dict[str, object]] = {
        "kafka": {
            "pid": owned_pid(settings, "kafka", str(kafka_config(settings))),
            "ready": kafka_ready(settings),
            "endpoint": settings.kafka.bootstrap_servers,
        },
        "redis": {
            "pid": owned_pid(settings, "redis", str(redis_dir(settings))),
            "ready": redis_ready(settings),
            "endpoint": settings.redis.url,
        },
    }
    alive = spark_alive_workers(settings)
    for name in spark_processes(settings):
        report[name] = {
            "pid": owned_pid(settings, name, spark_marker),
            "ready": alive is not None and (name == "spark-master" or alive > 0),
            "endpoint": spark_master_url(settings) if name == "spark-master" else "",
        }
    report["airflow"] = {
        "pid": airflow_pid(settings),
        "ready": airflow_ready(settings),
        "endpoint": airflow_url(settings),
    }
    metrics_url = f"http://127.0.0.1:{settings.serving.metrics_port}/metrics"
    serving = feedrank_processes(settings, "serve") or [None]
    for i, pid in enumerate(serving, start=1):
        report["serve" if i == 1 else f"serve-{i}"] = {
            "pid": pid,
            "ready": pid is not None and http_answers(metrics_url),
            "endpoint": metrics_url if i == 1 else "",
        }
    streaming = feedrank_processes(settings, "stream-features") or [None]
    for i, pid in enumerate(streaming, start=1):
        report["stream-features" if i == 1 else f"stream-features-{i}"] = {
            "pid": pid,
            "ready": pid is not None,
            "endpoint": "engagements -> Feast push" if i == 1 else "",
        }
    # Services controlled by modules of their own report here too.
    from feedrank import prometheus

    report.update(prometheus.status(settings))
    return report


def profile_services(settings: Settings | None = None) -> tuple[str, ...]:
    """Services the profile needs: Kafka always, Redis for redis/cluster, Spark for cluster."""
    profile = resolve(settings).profile
    return {
        "local": ("kafka",),
        "redis": ("kafka", "redis"),
        "cluster": ("kafka", "redis", "spark-cluster"),
    }[profile]
