"""``feedrank demo``: the whole loop on one machine, with a short summary at the end.

Long because: the demo is one script of steps (world, DAG, serving, landing, summary) that read
in order.

Start Kafka → make the simulated world reach the demo's day (``--today``, default the wall
clock's UTC day): a new backfill whose last day ends at that day's midnight, or the lake's
world extended by the missing days → run the retrain DAG with ``airflow dags test``
(validate, features, validate features, training data, train, evaluate, promote,
materialize), following its log
→ serve with ``feedrank serve`` while the closed-loop simulator sends feed requests and
answers the served feeds from its ground truth (arms: chronological control, champion
treatment, oracle ceiling) → land what was served → experiment report → summary.

The day is a setting, not the wall clock: every step uses ``--today`` (backfill end, the
DAG's logical date, the experiment report's day). The live phase cannot run on a simulated
day's clock (serving deadlines and engagement delays are real time), so it runs on the wall
clock shifted by whole days onto ``--today`` (``clock.offset_s``, passed to ``feedrank
serve`` and the live simulator): the time of day and elapsed times stay real, the event
dates are the demo's day.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from feedrank.config import Settings, Topics, get_settings
from feedrank.errors import FeedrankError
from feedrank.stats import percentile

console = Console()
DEMO_ARMS = {"control": 0.45, "treatment": 0.45, "oracle": 0.10}
# The retrain DAG trains on 7 days and holds out the 8th (its ``training_days``), and the
# features of a window's first day need one earlier day of history: 9 days. Fewer users
# than with the old 3-day window keep the demo's time about the same (docs/quality.md).
DEMO_DAYS = 9
DEMO_USERS = 500
DEMO_SPARK_JIT_OPTION = "-XX:TieredStopAtLevel=1"


def _step(title: str) -> float:
    console.rule(f"[bold]{title}")
    return time.monotonic()


def _feedrank(*args: str, env: dict[str, str] | None = None) -> None:
    exe = Path(sys.executable).with_name("feedrank")
    done = subprocess.run([str(exe), *args], env=env)
    if done.returncode != 0:
        raise FeedrankError(f"'feedrank {' '.join(args)}' failed (exit {done.returncode})")


DAG_ID = "feed_ranking_retrain"
# A monitoring breach fails its task alone, not training (see the DAG's docstring).
NON_BLOCKING_TASKS = frozenset({"monitor"})
# Lines of `airflow dags test` (Airflow 3.3: dag.test() and the Task SDK runner) that mark a
# task's progress; everything else in the log is detail for the log file.
_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
_TASK_STATE = re.compile(r"Task instance state updated\b.*\bnew_state=(\w+)")
_TASK_SKIP = re.compile(r"Skipping task\..*\breason=(['\"])(.*)\1")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit)): (.+)$")
_WAITING = re.compile(r"\] waiting for (.+?)\s+\[[\w.]+\]")
_COMMAND_REASON = re.compile(r"exited -?\d+: (.*)$")
_ERROR_PREFIX = "feedrank: error: "


class GateRefused(FeedrankError):
    """The retrain DAG stopped at a gate (validation failed, promotion refused)."""


@dataclass
class DagProgress:
    """What the followed ``airflow dags test`` log said so far, task by task."""

    current: str | None = None
    started_s: float = 0.0
    state: str | None = None
    reason: str | None = None
    states: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    stop: str | None = None  # why the demo ends the run now, if it must
    retrying: str | None = None  # a task that just ended up for retry (not announced yet)


def _one_line_reason(exc_type: str, message: str) -> str:
    # A failed `feedrank <command>` carries the command line; its own one line is the reason.
    found = _COMMAND_REASON.search(message)
    return found.group(1).removeprefix(_ERROR_PREFIX) if found else f"{exc_type}: {message}"


def follow_dag_line(progress: DagProgress, line: str) -> list[str]:
    """Update ``progress`` with one log line; returns what the demo should print about it.

    A task that fails for good (not ``monitor``) or a promotion skipped by the gate sets
    ``progress.stop``: the demo ends the run there instead of waiting for what follows.
    """
    now = time.strftime("%H:%M:%S", time.gmtime())
    if found := _TASK_START.search(line):
        progress.current, progress.state, progress.reason = found.group(1), None, None
        progress.started_s = time.monotonic()
        return [f"{now}  {progress.current}: started"]
    if progress.current is None:
        return []
    if found := _TASK_STATE.search(line):
        progress.state = found.group(1)
    elif found := _TASK_SKIP.search(line):
        progress.reason = found.group(2).removeprefix(_ERROR_PREFIX)
    elif found := _EXCEPTION.match(line.strip()):
        progress.reason = _one_line_reason(found.group(1), found.group(2))
    elif found := _WAITING.search(line):
        return [f"{now}  {progress.current}: waiting for {found.group(1)}"]
    elif found := _TASK_END.search(line):
        task, state = found.group(1), progress.state or "unknown"
        took = time.monotonic() - progress.started_s
        progress.states[task] = state
        if progress.reason:
            progress.reasons[task] = progress.reason
        why = f": {progress.reason}" if progress.reason and state != "success" else ""
        progress.current = None
        if state == "failed" and task not in NON_BLOCKING_TASKS:
            progress.stop = f"{task} failed{why}"
        elif state == "skipped" and task == "promote":
            progress.stop = f"promote skipped{why}"
        elif state == "up_for_retry":
            progress.retrying = task
        return [f"{now}  {task}: {state} after {took:.0f} s{why}"]
    return []


RETRY_ROW_WAIT_S = 10.0


def next_retry_at(dag_id: str, task_id: str, logical_date: str) -> str:
    """When Airflow retries ``task_id`` of the run at ``logical_date`` (ISO, UTC).

    Airflow's own rule (``TaskInstance.next_retry_datetime``: backoff, jitter, cap) on its
    metadata DB; run in a child process with the run folder's Airflow environment, since
    Airflow reads its configuration once, at import.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    midnight = dt.datetime.combine(dt.date.fromisoformat(logical_date), dt.time(), dt.UTC)
    # The task's log says up_for_retry before its row has the end time the rule counts from
    # (seen on a loaded machine: ``None + timedelta``): wait for it, a few seconds at most.
    deadline = time.monotonic() + RETRY_ROW_WAIT_S
    while True:
        with create_session() as session:
            ti = session.scalars(
                select(TaskInstance)
                .join(TaskInstance.dag_run)
                .where(
                    TaskInstance.dag_id == dag_id,
                    TaskInstance.task_id == task_id,
                    DagRun.logical_date == midnight,
                )
                .order_by(TaskInstance.end_date.desc())
            ).first()
            if ti is None:
                raise FeedrankError(f"no task instance {dag_id}.{task_id} at {logical_date}")
            if ti.end_date is not None or time.monotonic() >= deadline:
                ti.task = SerializedDagModel.get_dag(dag_id, session=session).get_task(task_id)
                return ti.next_retry_datetime().isoformat()
        time.sleep(0.2)


def _announce_retry(env: dict[str, str], dag_id: str, task_id: str, day: dt.date) -> None:
    # Importing Airflow takes seconds: on a thread, so the log keeps being followed.
    code = (
        "import sys; from feedrank.demo import next_retry_at; print(next_retry_at(*sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, dag_id, task_id, day.isoformat()],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # a courtesy; the run goes on regardless
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        console.print(f"          {task_id}: retry time unknown ({tail})")
        return
    at = dt.datetime.fromisoformat(done.stdout.strip())
    wait_s = (at - dt.datetime.now(dt.UTC)).total_seconds()
    when = f"in {wait_s:.0f} s" if wait_s >= 0 else f"{-wait_s:.0f} s ago"
    console.print(f"          {task_id}: retry at {at:%H:%M:%S} UTC ({when})")


def _stop_process_group(proc: subprocess.Popen) -> None:
    """End ``airflow dags test`` and everything it started (task commands, Spark JVMs)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_retrain_dag(
    settings: Settings,
    logical_date: dt.date,
    dag_id: str = DAG_ID,
    dags_folder: Path | None = None,
) -> DagProgress:
    """``airflow dags test feed_ranking_retrain <date>`` in this run folder's Airflow.

    The log is followed while the DAG runs: each task's start and end is printed within a
    second, with the one-line reason of a failure, a skip or a retry (and when the retry
    comes). A gate that stops the run (a task failed for good, promotion refused) ends it at
    once instead of waiting for the tasks after it.

    Args:
        settings: Resolved settings (the run folder's Airflow).
        logical_date: The run's logical date (it processes the day before).
        dag_id: Another DAG (tests).
        dags_folder: Another DAGs folder (tests; default the repository's ``dags/``).

    Raises:
        GateRefused: The run stopped at a gate; the message is its reason.
        FeedrankError: ``airflow dags test`` failed otherwise.
    """
    from feedrank import services

    services.airflow_migrate(settings)
    env = {**os.environ, **services.airflow_env(settings)}
    if dags_folder is not None:
        env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    exe = Path(sys.executable).with_name("airflow")
    log_path = settings.paths.logs / "demo-retrain-dag.log"
    console.print(f"retrain DAG for {logical_date} (log: {log_path})")
    progress = DagProgress()
    announcers: list[threading.Thread] = []
    with log_path.open("w") as out, log_path.open() as follow:
        proc = subprocess.Popen(
            [str(exe), "dags", "test", dag_id, logical_date.isoformat()],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: a gate stop ends all of it
        )
        try:
            pending = ""
            while True:
                chunk = follow.readline()
                if not chunk:
                    if proc.poll() is not None and not follow.readline():
                        break
                    time.sleep(0.2)
                    continue
                pending += chunk
                if not pending.endswith("\n"):
                    continue  # a line still being written
                line, pending = pending, ""
                for message in follow_dag_line(progress, line):
                    console.print(message)
                if progress.retrying:
                    announcers.append(
                        threading.Thread(
                            target=_announce_retry,
                            args=(env, dag_id, progress.retrying, logical_date),
                            daemon=True,
                        )
                    )
                    announcers[-1].start()
                    progress.retrying = None
                if progress.stop:
                    console.print(f"[bold red]stopping the retrain DAG: {progress.stop}")
                    break
        finally:
            _stop_process_group(proc)
            for announcer in announcers:
                announcer.join(timeout=60)  # say when the retry was due, even if it is over
    if progress.stop:
        raise GateRefused(f"retrain DAG stopped at a gate: {progress.stop} (log: {log_path})")
    if proc.returncode != 0:
        failed = [t for t, s in progress.states.items() if s == "failed"]
        raise FeedrankError(
            f"retrain DAG failed (exit {proc.returncode}; failed: {', '.join(failed) or '?'}); "
            f"see {log_path}"
        )
    return progress


def gate_reason(settings: Settings) -> str | None:
    """The newest promotion decision that refused its model: ``"<version>: <failures>"``."""
    decisions = sorted(
        settings.paths.reports.glob("*/promotion.json"), key=lambda p: p.stat().st_mtime
    )
    for path in reversed(decisions):
        decision = json.loads(path.read_text())
        if not decision.get("promoted", True):
            return f"{decision.get('challenger')}: " + "; ".join(decision.get("failures", []))
    return None


def _end_offsets(settings: Settings, topic: str):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.kafka.client_options("admin"), enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    return consumer, consumer.end_offsets(partitions)


def _read_feeds(settings: Settings, start_offsets: dict, consumer) -> list:
    """The ranked feeds from ``start_offsets`` to the current end; any record that is not a
    valid feed goes to ``ranked_feeds.dlq`` (the demo reads on, whatever a producer wrote)."""
    from kafka import KafkaProducer

    from feedrank.schemas import DeadLetter, decode_record

    consumer.assign(list(start_offsets))
    for tp, offset in start_offsets.items():
        consumer.seek(tp, offset)
    ends = consumer.end_offsets(list(start_offsets))
    feeds, letters = [], []
    while any(consumer.position(tp) < end for tp, end in ends.items()):
        for tp, records in consumer.poll(timeout_ms=500).items():
            for r in records:
                event = decode_record(tp.topic, r)
                (letters if isinstance(event, DeadLetter) else feeds).append(event)
    consumer.close(autocommit=False)
    if letters:
        producer = KafkaProducer(
            **settings.kafka.client_options("admin"),
            **settings.kafka.producer_options(),
        )
        for letter in letters:
            producer.send(letter.dlq_topic, letter.to_bytes())
        producer.close(timeout=30)
        console.print(f"{len(letters)} records of ranked_feeds dead-lettered (ranked_feeds.dlq)")
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
    consumer, ends = _end_offsets(settings, Topics.FEED_REQUESTS)
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


def clock_offset_s(today: dt.date) -> int:
    """Whole days from the wall clock's UTC day to ``today``, in seconds (``clock.offset_s``)."""
    return (today - dt.datetime.now(dt.UTC).date()).days * 86_400


def closed_loop(
    settings: Settings, duration_s: float, rate_rps: float, today: dt.date | None = None
) -> tuple[list, dict]:
    """Serve while the closed-loop simulator sends requests; return its feeds and stats.

    With ``today``, serving and the simulator stamp event times on that day (the wall clock
    shifted by whole days, :func:`clock_offset_s`); by default on the wall clock's day.
    """
    from feedrank.simulator.live import run_live

    offset_s = clock_offset_s(today) if today is not None else settings.clock.offset_s
    settings = settings.model_copy(
        update={"clock": settings.clock.model_copy(update={"offset_s": offset_s})}
    )
    env = {
        **os.environ,
        "FEEDRANK_EXPERIMENT__ARMS": json.dumps(DEMO_ARMS),
        "FEEDRANK_CLOCK__OFFSET_S": str(offset_s),
        # Every request is also ranked by every policy (paired counterfactual comparison),
        # unless the caller's environment switches it off (to measure what it costs).
        "FEEDRANK_EXPERIMENT__COUNTERFACTUAL": os.environ.get(
            "FEEDRANK_EXPERIMENT__COUNTERFACTUAL", "true"
        ),
    }
    log_path = settings.paths.logs / "demo-serve.out"
    exe = Path(sys.executable).with_name("feedrank")
    with log_path.open("w") as out:
        server = subprocess.Popen(
            [str(exe), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_until_serving(settings, server)
        consumer, start = _end_offsets(settings, Topics.RANKED_FEEDS)
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


def latency_samples(feeds: list) -> dict[str, list[float]]:
    """Per arm, each served feed's end-to-end latency (requested → served) in ms."""
    out: dict[str, list[float]] = {}
    for f in feeds:
        out.setdefault(f.arm, []).append((f.served_at - f.requested_at).total_seconds() * 1e3)
    return out


def latency_table(feeds: list) -> dict:
    """End-to-end answer latency (requested → served) per arm, misses and degraded share."""
    out: dict = {}
    samples = latency_samples(feeds)
    for arm in sorted(samples):
        arm_feeds = [f for f in feeds if f.arm == arm]
        ms = np.array(samples[arm])
        out[arm] = {
            "feeds": len(arm_feeds),
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
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
    from feedrank.experiment_cli import print_online_comparison, print_report

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


def run_demo(
    settings: Settings,
    users: int,
    days: int,
    serve_s: float,
    rate_rps: float,
    today: dt.date | None = None,
) -> dict:
    """The whole loop; returns the summary also written to ``<reports>/demo.json``.

    Args:
        settings: Resolved settings (run folder, ports).
        users: Simulated users.
        days: Days of simulated history before ``today``.
        serve_s: Seconds of closed-loop serving.
        rate_rps: Feed requests per second while serving.
        today: The demo's day (default: the wall clock's UTC day): the backfill ends at its
            midnight, the DAG runs with it as logical date, serving plays on it.

    Raises:
        FeedrankError: A step failed; with no champion after the DAG, the gate's reason.
    """
    from feedrank import services
    from feedrank.experiment_analysis import report_from_lake
    from feedrank.simulator.backfill import extend_or_start
    from feedrank.tracking import champion_version, tracking_uri
    from serving.scorer import NO_CHAMPION_RANKER

    started = time.monotonic()
    # Every process of the demo (scorer, DAG tasks) must rebuild the same simulated world.
    os.environ["FEEDRANK_SIMULATOR__USERS"] = str(users)
    # The demo's Spark jobs (features, training data, landing) run on a few MB: with the
    # JIT's C1 tier only, training data took 73.5 instead of 107.5-109.8 CPU-s and features
    # 59 instead of 65 (docs/performance.md, #23); large runs want C2 (the default).
    os.environ.setdefault(
        "FEEDRANK_SPARK__DRIVER_JAVA_OPTIONS",
        f"{settings.spark.driver_java_options} {DEMO_SPARK_JIT_OPTION}".strip(),
    )
    settings = settings.model_copy(
        update={"simulator": settings.simulator.model_copy(update={"users": users})}
    )
    today = today or dt.datetime.now(dt.UTC).date()
    last_day = today - dt.timedelta(days=1)
    console.print(f"demo day {today} ({today:%A}); the lake's last simulated day: {last_day}")
    _step("1/6 services")
    services.kafka_up(settings)
    _step(f"2/6 simulated world: {days} days up to {last_day}")
    world, backfill = extend_or_start(settings, settings.paths.lake, last_day, days)
    console.print(f"[bold]{backfill['plan']}")
    _step("3/6 retrain DAG (validate → features → training data → train → evaluate → promote)")
    try:
        run_retrain_dag(settings, today)
    except GateRefused as exc:
        version = champion_version(settings)
        if version is None:
            # Its promotion report names every failed check (the log line only the first).
            gate = gate_reason(settings) if "promote skipped" in str(exc) else None
            raise GateRefused(
                f"no champion: {exc}"
                + (f"; promotion gate refused {gate}" if gate else "")
                + f"; `feedrank serve` would answer every feed with the {NO_CHAMPION_RANKER} "
                "fallback, flagged degraded"
            ) from None
        raise GateRefused(f"{exc}; the champion stays {version}") from None
    version = champion_version(settings)
    if version is None:
        raise GateRefused(
            "the retrain DAG promoted no champion; gate: "
            f"{gate_reason(settings) or 'no promotion decision found'}"
        )
    metrics_path = settings.paths.reports / version / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    _step(f"4/6 serve champion {version} with the closed-loop simulator ({serve_s:.0f} s)")
    feeds, live = closed_loop(settings, serve_s, rate_rps, today)
    _step("5/6 land served impressions and engagements")
    _feedrank("land")
    # Served on the demo's day; a run that crosses midnight also served on the next one.
    served_days = sorted({f.served_at.date().isoformat() for f in feeds}) or [today.isoformat()]
    experiment = report_from_lake(
        settings.paths.lake,
        served_days,
        settings.ranking.weights,
        request_ids={f.request_id for f in feeds},
    )
    _step("6/6 summary")
    latency = latency_table(feeds)
    from serving.counterfactual import counterfactual_summary

    counterfactual = counterfactual_summary(settings, {f.request_id for f in feeds})
    print_summary(feeds, latency, metrics, experiment, counterfactual)
    summary = {
        "today": today.isoformat(),
        "world": {"kind": world, "plan": backfill["plan"]},
        "champion": version,
        "mlflow": {
            "tracking_uri": tracking_uri(settings),
            "run_id": metrics.get("mlflow_run_id"),
        },
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
    from feedrank.demo_report import write_report_html

    page = write_report_html(
        settings.paths.reports / "report.html",
        summary,
        metrics,
        latency_samples(feeds),
        settings.serving.budget_ms,
        settings.paths.reports / version / "calibration.png",
    )
    console.print(f"report: {page} (offline: {settings.paths.reports / version / 'report.md'})")
    console.print(
        f"MLflow: run {metrics.get('mlflow_run_id')} in {tracking_uri(settings)} "
        "(`feedrank models`, `make mlflow-ui`)"
    )
    console.print(f"summary: {out}; logs: {settings.paths.logs}")
    console.print(f"demo finished in {summary['seconds']:.0f} s")
    return summary


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``feedrank demo``."""

    @app.command("demo")
    def demo_command(
        users: int = typer.Option(DEMO_USERS, min=10, help="Simulated users."),
        days: int = typer.Option(
            DEMO_DAYS, min=3, help="Backfill days ending at --today's midnight."
        ),
        serve_s: float = typer.Option(30.0, min=1, help="Seconds of closed-loop serving."),
        rate: float = typer.Option(20.0, min=0.1, help="Feed requests per second."),
        today: str | None = typer.Option(
            None,
            help="The demo's day, YYYY-MM-DD (default: today, UTC): the backfill ends at its "
            "midnight, the DAG runs for it, serving plays on it.",
        ),
    ) -> None:
        """Run the whole loop end to end on the embedded defaults and print a summary."""

        def stop(signum: int, frame: object) -> None:
            # As an exception, so the DAG's process group and `feedrank serve` are stopped on
            # the way out (a bare SIGTERM would leave them running).
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, stop)
        day = None
        if today is not None:
            try:
                day = dt.date.fromisoformat(today)
            except ValueError:
                raise FeedrankError(f"--today {today!r} is not YYYY-MM-DD") from None
        run_demo(get_settings(), users, days, serve_s, rate, day)
