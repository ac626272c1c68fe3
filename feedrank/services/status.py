"""``make status``: every service feedrank can run in this run folder, its pid and whether it
answers now (Kafka, each broker of a cluster, Redis, the Spark cluster, Airflow,
``feedrank serve``, ``stream-features``)."""

from __future__ import annotations

from feedrank.config import Settings
from feedrank.readiness import kafka_live_brokers, kafka_ready, redis_ready
from feedrank.services.airflow_standalone import airflow_pid, airflow_ready, airflow_url
from feedrank.services.kafka_broker import broker_nodes
from feedrank.services.process import feedrank_processes, http_answers, owned_pid, resolve
from feedrank.services.redis_server import redis_dir
from feedrank.services.serve_processes import serve_metrics_port, serve_names
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
    report: dict[str, dict[str, object]] = {}
    nodes = broker_nodes(settings)
    if len(nodes) == 1:
        report["kafka"] = {
            "pid": owned_pid(settings, "kafka", str(nodes[0].config)),
            "ready": kafka_ready(settings),
            "endpoint": settings.kafka.bootstrap_servers,
        }
    else:
        live = kafka_live_brokers(settings) or set()
        for node in nodes:
            report[node.name] = {
                "pid": owned_pid(settings, node.name, str(node.config)),
                "ready": node.node_id in live,
                "endpoint": f"{settings.kafka.host}:{node.port}",
            }
    report |= {
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
    # `make up`'s serve processes (pid files serve-<i>) on their own /metrics ports; any
    # other `feedrank serve` of this run folder (demo, by hand) on serving.metrics_port.
    started = {
        pid: serve_metrics_port(settings, name)
        for name in serve_names(settings)
        if (pid := owned_pid(settings, name, str(settings.paths.home))) is not None
    }
    # (A process's /proc environ can read blank once a library rewrote its title: the pid
    # files of `make up`'s processes do not depend on it.)
    serving = sorted(set(feedrank_processes(settings, "serve")) | set(started)) or [None]
    for i, pid in enumerate(serving, start=1):
        port = started.get(pid, settings.serving.metrics_port if i == 1 else None)
        metrics_url = f"http://127.0.0.1:{port}/metrics" if port else ""
        report["serve" if i == 1 else f"serve-{i}"] = {
            "pid": pid,
            "ready": pid is not None and (http_answers(metrics_url) if port else True),
            "endpoint": metrics_url,
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
    """Services the profile needs: Kafka always, Redis for redis/cluster/secure, Spark for cluster,
    and ``serving.processes`` ``feedrank serve`` members when it is above 0 (cluster: 2)."""
    settings = resolve(settings)
    services = {
        "local": ("kafka",),
        "redis": ("kafka", "redis"),
        "cluster": ("kafka", "redis", "spark-cluster"),
        "secure": ("kafka", "redis"),
    }[settings.profile]
    return (*services, "serve") if settings.serving.processes > 0 else services
