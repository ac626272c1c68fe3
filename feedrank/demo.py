"""``feedrank demo``: the whole loop on one machine, with a short summary at the end.

Start Kafka → simulate a backfill whose last day ended at today's midnight → run the retrain
DAG with ``airflow dags test`` (validate, features, training data, train, evaluate, promote,
materialize) → serve with ``feedrank serve`` while the closed-loop simulator sends feed
requests and answers the served feeds from its ground truth (arms: chronological control,
champion treatment, oracle ceiling) → land what was served → experiment report → summary.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from feedrank.config import Settings, get_settings
from feedrank.errors import FeedrankError

console = Console()
DEMO_ARMS = {"control": 0.45, "treatment": 0.45, "oracle": 0.10}


def _step(title: str) -> float:
    console.rule(f"[bold]{title}")
    return time.monotonic()


def _feedrank(*args: str, env: dict[str, str] | None = None) -> None:
    exe = Path(sys.executable).with_name("feedrank")
    done = subprocess.run([str(exe), *args], env=env)
    if done.returncode != 0:
        raise FeedrankError(f"'feedrank {' '.join(args)}' failed (exit {done.returncode})")


def run_retrain_dag(settings: Settings, logical_date: dt.date) -> None:
    """``airflow dags test feed_ranking_retrain <date>`` in this run folder's Airflow."""
    from feedrank import services

    services.airflow_migrate(settings)
    env = {**os.environ, **services.airflow_env(settings)}
    exe = Path(sys.executable).with_name("airflow")
    log_path = settings.paths.logs / "demo-retrain-dag.log"
    console.print(f"retrain DAG for {logical_date} (log: {log_path})")
    with log_path.open("w") as out:
        done = subprocess.run(
            [str(exe), "dags", "test", "feed_ranking_retrain", logical_date.isoformat()],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise FeedrankError(f"retrain DAG failed (exit {done.returncode}); see {log_path}")


def _end_offsets(settings: Settings, topic: str):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False
    )
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    return consumer, consumer.end_offsets(partitions)


def _read_feeds(settings: Settings, start_offsets: dict, consumer) -> list:
    from feedrank.schemas import RankedFeed

    consumer.assign(list(start_offsets))
    for tp, offset in start_offsets.items():
        consumer.seek(tp, offset)
    ends = consumer.end_offsets(list(start_offsets))
    feeds = []
    while any(consumer.position(tp) < end for tp, end in ends.items()):
        for records in consumer.poll(timeout_ms=500).values():
            feeds += [RankedFeed.model_validate_json(r.value) for r in records]
    consumer.close(autocommit=False)
    return feeds


def _wait_until_serving(
    settings: Settings, server: subprocess.Popen, timeout_s: float = 300.0
) -> None:
    """Wait until ``feedrank serve`` owns every ``feed_requests`` partition: its readiness
    gauge on ``/metrics`` (no probe request: one would be served, logged and counted as a
    session of the experiment)."""
    from urllib.error import URLError
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    if settings.serving.metrics_port <= 0:
        raise FeedrankError("the demo needs serving.metrics_port > 0: it reads /metrics")
    consumer, ends = _end_offsets(settings, "feed_requests")
    consumer.close()
    url = f"http://127.0.0.1:{settings.serving.metrics_port}/metrics"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise FeedrankError(f"feedrank serve exited ({server.returncode}) before serving")
        try:
            text = urlopen(url, timeout=2).read().decode()
        except (URLError, OSError):
            text = ""  # not listening yet
        owned = [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "feedrank_serving_assigned_partitions"
        ]
        if owned and owned[0] >= len(ends):
            return
        time.sleep(0.5)
    raise FeedrankError(f"feedrank serve did not own the partitions within {timeout_s:.0f} s")


def closed_loop(settings: Settings, duration_s: float, rate_rps: float) -> tuple[list, dict]:
    """Serve while the closed-loop simulator sends requests; return its feeds and stats."""
    from feedrank.simulator.live import run_live

    env = {
        **os.environ,
        "FEEDRANK_EXPERIMENT__ARMS": json.dumps(DEMO_ARMS),
        # Every request is also ranked by every policy (paired counterfactual comparison).
        "FEEDRANK_EXPERIMENT__COUNTERFACTUAL": "true",
    }
    log_path = settings.paths.logs / "demo-serve.out"
    exe = Path(sys.executable).with_name("feedrank")
    with log_path.open("w") as out:
        server = subprocess.Popen(
            [str(exe), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_until_serving(settings, server)
        consumer, start = _end_offsets(settings, "ranked_feeds")
        stats = run_live(settings, rate_rps, duration_s, closed_loop=True, lake=settings.paths.lake)
        wanted = set(stats.request_ids)
        feeds = [f for f in _read_feeds(settings, start, consumer) if f.request_id in wanted]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    return feeds, stats.as_dict()


def latency_table(feeds: list) -> dict:
    """End-to-end answer latency (requested → served) per arm, misses and degraded share."""
    out: dict = {}
    for arm in sorted({f.arm for f in feeds}):
        arm_feeds = [f for f in feeds if f.arm == arm]
        ms = np.array([(f.served_at - f.requested_at).total_seconds() * 1e3 for f in arm_feeds])
        out[arm] = {
            "feeds": len(arm_feeds),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "deadline_misses": sum(f.deadline_missed for f in arm_feeds),
            "degraded_share": float(np.mean([f.degraded for f in arm_feeds])),
        }
    return out


def print_summary(
    feeds: list,
    latency: dict,
    metrics: dict,
    experiment: dict,
    counterfactual: dict | None = None,
) -> None:
    """Sample feed, latency, offline metrics vs the references, realized and paired lift."""
    from feedrank.experiment import print_online_comparison, print_report

    sample = next((f for f in feeds if f.arm == "treatment" and f.items), None)
    if sample is not None:
        table = Table(title=f"sample ranked feed: user {sample.user_id} ({sample.model_version})")
        for col in ("position", "tweet", "author", "score"):
            table.add_column(col)
        for item in sample.items[:10]:
            table.add_row(
                str(item.position), str(item.tweet_id), str(item.author_id), f"{item.score:.4f}"
            )
        console.print(table)
    table = Table(title="serving latency (requested → served)")
    for col in ("arm", "feeds", "p50 ms", "p99 ms", "misses", "degraded"):
        table.add_column(col)
    for arm, row in latency.items():
        table.add_row(
            arm,
            str(row["feeds"]),
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            str(row["deadline_misses"]),
            f"{row['degraded_share']:.1%}",
        )
    console.print(table)
    table = Table(
        title="offline metrics on the held-out day: model vs the knowable references "
        "(no_pair: no pair history; ceiling: Bayes given the logs) and the oracle"
    )
    for col in ("head", "AUC", "oracle AUC", "RCE", "no_pair", "ceiling", "oracle RCE"):
        table.add_column(col)
    table.add_column("model share of no_pair / ceiling / oracle")

    def num(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    for head, m in metrics.get("heads", {}).items():
        table.add_row(
            head, num(m["auc"], 3), num(m["oracle_auc"], 3), num(m["rce"], 2),
            num(m.get("no_pair_rce"), 2), num(m.get("ceiling_rce"), 2), num(m["oracle_rce"], 2),
            " / ".join(
                num(m.get(f"rce_share_of_{name}"), 2) for name in ("no_pair", "ceiling", "oracle")
            ),
        )  # fmt: skip
    console.print(table)
    ndcg = metrics.get("ndcg10", {})
    console.print("NDCG@10: " + ", ".join(f"{k} {v:.3f}" for k, v in ndcg.items() if v))
    shares = [
        f"{name} {ndcg['model'] / ndcg[name]:.3f}"
        for name in ("no_pair", "ceiling", "oracle")
        if ndcg.get(name) and ndcg.get("model")
    ]
    if shares:
        console.print("model NDCG@10 as a share of: " + ", ".join(shares))
    print_report(experiment)
    print_online_comparison(experiment, counterfactual)


def run_demo(settings: Settings, users: int, days: int, serve_s: float, rate_rps: float) -> dict:
    """The whole loop; returns the summary also written to ``<reports>/demo.json``."""
    from feedrank import services
    from feedrank.experiment import report_from_lake
    from feedrank.registry import champion_version
    from feedrank.simulator.backfill import simulate_backfill

    started = time.monotonic()
    # Every process of the demo (scorer, DAG tasks) must rebuild the same simulated world.
    os.environ["FEEDRANK_SIMULATOR__USERS"] = str(users)
    settings = settings.model_copy(
        update={"simulator": settings.simulator.model_copy(update={"users": users})}
    )
    today = dt.datetime.now(dt.UTC).date()
    first_day = today - dt.timedelta(days=days)
    _step("1/6 services")
    services.kafka_up(settings)
    _step(f"2/6 simulate {days} days ({first_day} … {today - dt.timedelta(days=1)})")
    simulate_backfill(settings, settings.paths.lake, days=days, start_date=first_day.isoformat())
    _step("3/6 retrain DAG (validate → features → training data → train → evaluate → promote)")
    run_retrain_dag(settings, today)
    version = champion_version(settings)
    if version is None:
        raise FeedrankError("the retrain DAG promoted no champion")
    metrics_path = settings.paths.reports / version / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    _step(f"4/6 serve champion {version} with the closed-loop simulator ({serve_s:.0f} s)")
    feeds, live = closed_loop(settings, serve_s, rate_rps)
    _step("5/6 land served impressions and engagements")
    _feedrank("land")
    experiment = report_from_lake(
        settings.paths.lake, [today.isoformat()], settings.ranking.weights
    )
    _step("6/6 summary")
    latency = latency_table(feeds)
    from serving.experiment import counterfactual_summary

    counterfactual = counterfactual_summary(settings, {f.request_id for f in feeds})
    print_summary(feeds, latency, metrics, experiment, counterfactual)
    summary = {
        "champion": version,
        "live": live,
        "latency": latency,
        "offline_metrics": str(metrics_path),
        "experiment": experiment,
        "counterfactual": counterfactual,
        "seconds": time.monotonic() - started,
    }
    out = settings.paths.reports / "demo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str))
    console.print(f"report: {settings.paths.reports / version / 'report.md'}")
    console.print(f"summary: {out}; logs: {settings.paths.logs}")
    console.print(f"demo finished in {summary['seconds']:.0f} s")
    return summary


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``feedrank demo``."""

    @app.command("demo")
    def demo_command(
        users: int = typer.Option(1_000, min=10, help="Simulated users."),
        days: int = typer.Option(4, min=3, help="Backfill days ending at today's midnight."),
        serve_s: float = typer.Option(60.0, min=1, help="Seconds of closed-loop serving."),
        rate: float = typer.Option(10.0, min=0.1, help="Feed requests per second."),
    ) -> None:
        """Run the whole loop end to end on the embedded defaults and print a summary."""
        run_demo(get_settings(), users, days, serve_s, rate)
