"""``make chaos``: fault scenarios under serving load on the replicated cluster profile.

The load is ``feedrank bench serving``'s (:func:`serving.latency_bench.run_bench`: requests of
1,000 candidates at a fixed rate, answered by 2 ``feedrank serve`` processes of one consumer
group); each scenario injects one fault while it runs and reports, per scenario: requests
sent, answered, lost (never answered), answered twice, budget misses, degraded answers, the
p99 latency of requests sent during the fault window, and the recovery time.

Scenario (the first of issue 26's list):

* ``broker_kill``: ``kill -9`` of the broker leading the busiest ``feed_requests`` partition
  (most messages), then its restart (``kafka_up`` starts only the missing node).

Everything runs in ``<paths.home>/chaos`` (brokers, Redis, a synthetic bench world), started
and stopped here; the brokers must be this run's own, so a ``make up`` cluster on the same
ports must be stopped first. The JSON report goes to ``<paths.home>/reports/chaos/``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from feedrank.config import PathsConfig, Settings, Topics, get_settings
from feedrank.errors import FeedrankError
from feedrank.stats import percentile

DEFAULT_RATE_RPS = 50.0
DEFAULT_CANDIDATES = 1_000
SERVERS = 2
TIMELINE_STEP_S = 5


def _log(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


def _busiest_partition_leader(settings: Settings) -> tuple[int, int]:
    """(partition, leader node id) of the ``feed_requests`` partition holding most messages."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    from feedrank.services.kafka_broker import describe_topics

    consumer = KafkaConsumer(**settings.kafka.client_options("admin"))
    admin = KafkaAdminClient(**settings.kafka.client_options("admin"))
    try:
        parts = [
            TopicPartition(Topics.FEED_REQUESTS, p)
            for p in consumer.partitions_for_topic(Topics.FEED_REQUESTS)
        ]
        ends = consumer.end_offsets(parts)
        busiest = max(parts, key=lambda tp: ends[tp]).partition
        (described,) = describe_topics(admin, [Topics.FEED_REQUESTS])
        leader = next(p["leader"] for p in described["partitions"] if p["partition"] == busiest)
        return busiest, int(leader)
    finally:
        consumer.close()
        admin.close()


class BrokerKill:
    """kill -9 the busiest partition's leader ``kill_after_s`` into the load; restart it
    ``down_s`` later. Records when each step happened (wall clock).

    ``baseline``: the same load and the same times, nothing killed (the window is then
    ``down_s`` long), to tell the fault's cost from the load's.
    """

    def __init__(
        self, settings: Settings, kill_after_s: float, down_s: float, baseline: bool = False
    ) -> None:
        self.settings = settings
        self.kill_after_s = kill_after_s
        self.down_s = down_s
        self.baseline = baseline
        self.events: dict[str, Any] = {}

    def __call__(self, load_started_at: float) -> None:
        from feedrank.services import broker_nodes, kafka_up
        from feedrank.services.process import owned_pid

        time.sleep(max(0.0, load_started_at + self.kill_after_s - time.time()))
        partition, leader = _busiest_partition_leader(self.settings)
        if self.baseline:
            now = time.time()
            self.events |= {"partition": partition, "broker": "none", "killed_at": now}
            time.sleep(self.down_s)
            self.events |= {"restart_at": time.time(), "restarted_at": time.time()}
            return
        node = next(n for n in broker_nodes(self.settings) if n.node_id == leader)
        pid = owned_pid(self.settings, node.name, str(node.config))
        if pid is None:
            raise FeedrankError(f"{node.name} (leader of partition {partition}) is not ours")
        os.kill(pid, signal.SIGKILL)
        self.events |= {"partition": partition, "broker": node.name, "killed_at": time.time()}
        _log(f"killed {node.name} (pid {pid}), leader of feed_requests-{partition}")
        time.sleep(self.down_s)
        self.events["restart_at"] = time.time()
        kafka_up(self.settings)
        self.events["restarted_at"] = time.time()
        _log(
            f"{node.name} back after {self.events['restarted_at'] - self.events['killed_at']:.1f} s"
        )


def broker_kill_report(
    figures: dict[str, Any], events: dict[str, Any], budget_ms: int
) -> dict[str, Any]:
    """The scenario's report from the bench's per-request record and the fault's times.

    The fault window runs from the kill until the broker is back. Recovery: from the kill to
    the last answer (of a request sent after the kill) that missed the budget; a request
    never answered leaves the service unrecovered (``None``).
    """
    rows = figures["per_request"]
    killed, back = events["killed_at"], events["restarted_at"]

    def latency_ms(row: dict[str, Any]) -> float:
        return (row["received"] - row["requested_at"]) * 1e3

    window = [r for r in rows if killed <= r["requested_at"] <= back and r["received"]]
    after = [r for r in rows if r["requested_at"] >= killed]
    late = [r for r in after if r["received"] is None or latency_ms(r) > budget_ms]
    lost = sum(r["received"] is None for r in rows)
    recovery = (
        None
        if any(r["received"] is None for r in after)
        else max((r["received"] - killed for r in late), default=0.0)
    )
    fault = (
        f"kill -9 {events['broker']} (leader of feed_requests-{events['partition']}), "
        f"restarted after {events['restart_at'] - killed:.0f} s"
        if events["broker"] != "none"
        else "none (baseline: same load, same window)"
    )
    return {
        "scenario": "broker_kill" if events["broker"] != "none" else "baseline",
        "fault": fault,
        "rate_rps": figures["rate_rps"],
        "candidates": figures["candidates"],
        "servers": figures["servers"],
        "sent": len(rows),
        "answered": len(rows) - lost,
        "lost": lost,
        "answered_twice": sum(r["answers"] > 1 for r in rows),
        "budget_ms": budget_ms,
        "budget_misses": sum(r["deadline_missed"] for r in rows),
        "degraded": sum(r["degraded"] for r in rows),
        "fault_window_s": back - killed,
        "fault_window_requests": len(window),
        "p99_fault_window_ms": percentile([latency_ms(r) for r in window], 99),
        "p99_overall_ms": figures["p99_ms"],
        "recovery_s": recovery,
        "broker_down_to_back_s": back - killed,
        "timeline": _timeline(rows, killed, budget_ms),
    }


def _timeline(rows: list[dict[str, Any]], killed: float, budget_ms: int) -> list[dict[str, Any]]:
    """Per :data:`TIMELINE_STEP_S` of send time, relative to the kill: sent, lost, late
    (answered after the budget, or lost) and the p99 latency of the answered."""
    buckets: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        buckets.setdefault(int((row["requested_at"] - killed) // TIMELINE_STEP_S), []).append(row)
    out = []
    for index in sorted(buckets):
        group = buckets[index]
        latencies = [(r["received"] - r["requested_at"]) * 1e3 for r in group if r["received"]]
        out.append(
            {
                "from_kill_s": index * TIMELINE_STEP_S,
                "sent": len(group),
                "lost": sum(r["received"] is None for r in group),
                "late": len(group) - sum(lat <= budget_ms for lat in latencies),
                "p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
            }
        )
    return out


def run_broker_kill(
    settings: Settings,
    *,
    rate_rps: float = DEFAULT_RATE_RPS,
    candidates: int = DEFAULT_CANDIDATES,
    duration_s: float = 90.0,
    kill_after_s: float = 20.0,
    down_s: float = 20.0,
    baseline: bool = False,
) -> dict[str, Any]:
    """Start the chaos run folder's services, run the scenario (or its ``baseline``: no
    fault) under load, stop them."""
    from feedrank import services
    from feedrank.services.process import owned_pid
    from serving.latency_bench import run_bench

    if settings.kafka.brokers < 3 or settings.kafka.min_insync_replicas < 2:
        raise FeedrankError("make chaos runs on the cluster profile (FEEDRANK_PROFILE=cluster)")
    home = settings.paths.home / "chaos"
    chaos = settings.model_copy(update={"paths": PathsConfig(home=home)})
    started_kafka = services.kafka_up(chaos)
    nodes = services.broker_nodes(chaos)
    if not started_kafka and any(owned_pid(chaos, n.name, str(n.config)) is None for n in nodes):
        raise FeedrankError(
            f"the brokers on {chaos.kafka.bootstrap_servers} are not this run's: "
            "stop them first (make down)"
        )
    started_redis = services.redis_up(chaos)
    fault = BrokerKill(chaos, kill_after_s=kill_after_s, down_s=down_s, baseline=baseline)
    try:
        figures = run_bench(
            chaos,
            candidates=candidates,
            rate_rps=rate_rps,
            duration_s=duration_s,
            naive_requests=0,
            servers=SERVERS,
            fault=fault,
            per_request=True,
        )
    finally:
        if started_redis:
            services.redis_down(chaos)
        services.kafka_down(chaos)
    return broker_kill_report(figures, fault.events, chaos.serving.budget_ms)


def main(
    duration: Annotated[float, typer.Option(min=30.0, help="Seconds of measured load.")] = 90.0,
    rate: Annotated[float, typer.Option(min=1.0, help="Requests per second.")] = 50.0,
    kill_after: Annotated[float, typer.Option(min=1.0, help="Kill this far into it.")] = 20.0,
    down: Annotated[float, typer.Option(min=0.0, help="Seconds before the restart.")] = 20.0,
    baseline: Annotated[
        bool, typer.Option("--baseline", help="Same load and window, nothing killed.")
    ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Report path.")] = None,
) -> None:
    """Run the broker-kill scenario under serving load; print and write its JSON report."""
    from feedrank.logs import setup_logging

    settings = get_settings()
    setup_logging("chaos", settings)
    report = run_broker_kill(
        settings,
        rate_rps=rate,
        duration_s=duration,
        kill_after_s=kill_after,
        down_s=down,
        baseline=baseline,
    )
    path = json_path or settings.paths.reports / "chaos" / f"{report['scenario']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(json.dumps(report, indent=2))
    _log(f"report: {path}")


if __name__ == "__main__":
    typer.run(main)
