"""Plumbing shared by feedrank's DAGs: which days or hours a run processes, how a task runs a
``feedrank`` subcommand, and the fault hook the retry test uses.

Standard library only, so parsing a DAG file never imports Spark, Feast or XGBoost. Listed in
``.airflowignore``: it defines no DAG.

Which data a run processes (one rule for every trigger):

* A scheduled run of a daily DAG has the data interval ``[D 00:00, D+1 00:00)`` and processes
  the UTC day ``D`` (its logical date). An hourly run processes its hour the same way.
* A manual run or ``dag.test()`` may get a zero-length interval (``data_interval_start ==
  data_interval_end == logical date L``, see FIELD-NOTES). It processes the last *complete*
  period before ``L``: the UTC day (or hour) that ended at or before ``L``. This matches how
  Airflow's interval timetables infer a manual run's interval, so ``airflow dags test
  feed_ranking_retrain 2026-11-04`` processes 2026-11-03 whichever timetable produced it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("feedrank.dags")

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
# Lake tables every simulated or landed day has rows in; the retrain sensor waits for them.
DAILY_LAKE_TABLES: tuple[str, ...] = ("feed_requests", "impressions", "engagements")
# Fault hook for tests: "<task_id>" or "<dag_id>.<task_id>" makes that task fail once, on its
# first try, after its command succeeded (a worker lost after the write). Never set it in
# production; the retry must then rewrite the same output, not add to it.
FAULT_ENV = "FEEDRANK_DAG_FAIL_ONCE"
# The one-slot pool of the online store's writers (both materialize tasks), declared in
# infra/airflow/pools.json and imported into the metadata DB by feedrank.airflow_pools.
ONLINE_STORE_POOL = "feedrank_online_store"
# How `feedrank monitor` words its one-line error when a check is breached (jobs/monitor_cli).
MONITOR_BREACH = "monitoring breached for"
# How `feedrank validate` words a failed gate (jobs.validate.GATE_FAILED; not imported: DAG
# parsing must not import pandas). A structure test checks the two agree.
GATE_FAILED = "validation failed for"


class FeedrankCommandError(RuntimeError):
    """A ``feedrank`` subcommand exited non-zero; ``reason`` is its one-line error."""

    def __init__(self, argv: list[str], returncode: int, reason: str) -> None:
        super().__init__(f"`{shlex.join(argv)}` exited {returncode}: {reason}")
        self.returncode = returncode
        self.reason = reason


class InjectedFault(RuntimeError):
    """Raised by :func:`maybe_fail_once` (tests only)."""


@dataclass(frozen=True)
class Days:
    """An inclusive range of UTC dates."""

    first: dt.date
    last: dt.date

    @property
    def start(self) -> str:
        """``first`` as ``YYYY-MM-DD``."""
        return self.first.isoformat()

    @property
    def end(self) -> str:
        """``last`` as ``YYYY-MM-DD``."""
        return self.last.isoformat()

    def __iter__(self) -> Iterator[dt.date]:
        day = self.first
        while day <= self.last:
            yield day
            day += DAY

    def widen(self, before_days: int) -> Days:
        """The same range with ``before_days`` more days in front (a trailing window)."""
        return Days(self.first - dt.timedelta(days=before_days), self.last)


def _utc(ts: dt.datetime | None, what: str) -> dt.datetime:
    """``ts`` as a plain ``datetime`` in UTC (Airflow hands out pendulum datetimes)."""
    if ts is None:
        raise ValueError(
            f"{what} is missing: feedrank DAG runs need a logical date (trigger with one)"
        )
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(ts.timestamp(), tz=dt.UTC)


def _floor(ts: dt.datetime, step: dt.timedelta) -> dt.datetime:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return epoch + ((ts - epoch) // step) * step


def _ceil(ts: dt.datetime, step: dt.timedelta) -> dt.datetime:
    floored = _floor(ts, step)
    return floored if floored == ts else floored + step


def interval_window(
    data_interval_start: dt.datetime | None,
    data_interval_end: dt.datetime | None,
    step: dt.timedelta,
) -> tuple[dt.datetime, dt.datetime]:
    """The ``[start, end)`` window, aligned to ``step``, that a run processes (module rule).

    Args:
        data_interval_start: the run's ``data_interval_start``.
        data_interval_end: the run's ``data_interval_end``.
        step: the DAG's period (:data:`DAY` or :data:`HOUR`).

    Returns:
        UTC datetimes; at least one ``step`` wide.
    """
    start = _utc(data_interval_start, "data_interval_start")
    end = _utc(data_interval_end, "data_interval_end")
    if end < start:
        raise ValueError(f"data interval ends ({end}) before it starts ({start})")
    if end == start:
        end = _floor(end, step)
        return end - step, end
    return _floor(start, step), _ceil(end, step)


def interval_days(
    data_interval_start: dt.datetime | None, data_interval_end: dt.datetime | None
) -> Days:
    """The UTC days a daily run processes (see the module docstring)."""
    start, end = interval_window(data_interval_start, data_interval_end, DAY)
    return Days(start.date(), (end - DAY).date())


def not_landed(lake: Path, tables: tuple[str, ...], days: Days) -> list[str]:
    """What keeps ``days`` from being complete in ``tables``, one phrase each (empty: done).

    A day is complete when its partition holds a Parquet file and the table's landed-through
    mark (:func:`feedrank.lake.landed_through`) has reached the midnight after the day: a
    file alone can be the first of a day's landing micro-batches. The layout is
    :mod:`feedrank.lake`'s (imported when the sensor runs, not when the DAG is parsed).
    """
    from feedrank.lake import landed_through, midnight, partition_dir

    needed = midnight(days.last + dt.timedelta(days=1))
    waiting = []
    for table in tables:
        through = landed_through(lake, table)
        if through is None or through < needed:
            got = "never marked" if through is None else f"marked {through.isoformat()}"
            waiting.append(f"{table} landed through {needed.isoformat()} ({got})")
        for day in days:
            folder = partition_dir(lake, table, day)
            if not any(folder.glob("*.parquet")):
                waiting.append(f"{table}/{folder.name}")
    return waiting


def feedrank_executable() -> str:
    """The ``feedrank`` console script of the interpreter running the task."""
    beside = Path(sys.executable).with_name("feedrank")
    return str(beside) if beside.exists() else "feedrank"


def feedrank_argv(args: tuple[str, ...], submit_args: list[str] | None) -> list[str]:
    """The command line of ``feedrank <args>``: through ``spark-submit`` for a Spark job when
    ``spark.submit_args`` is set (the cluster manager then runs it), else the local CLI."""
    from jobs.spark_entry import ENTRY, SPARK_COMMANDS

    if submit_args is not None and args and args[0] in SPARK_COMMANDS:
        spark_submit = Path(sys.executable).with_name("spark-submit")
        return [str(spark_submit), *submit_args, str(ENTRY), *args]
    return [feedrank_executable(), *args]


def run_feedrank(*args: str, env: dict[str, str] | None = None) -> str:
    """Run ``feedrank <args>`` in a child process and return its stdout.

    The child inherits the worker's environment (``FEEDRANK_PROFILE``, ``FEEDRANK_*``), so it
    resolves the same settings (Spark master, run folder, Feast store) as the CLI a person
    runs. Its stderr (logs, progress) streams into the task log as it comes. A Spark job goes
    through ``spark-submit`` when the profile sets ``spark.submit_args``.

    Raises:
        FeedrankCommandError: non-zero exit, with the command's one-line reason.
    """
    from feedrank.config import get_settings

    argv = feedrank_argv(args, get_settings().spark.submit_args)
    log.info("running %s", shlex.join(argv))
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )

    def pump_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip()
            if line:
                tail.append(line)
                log.info("%s", line)

    pump = threading.Thread(target=pump_stderr, daemon=True)
    pump.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    returncode = proc.wait()
    pump.join()
    for line in stdout.splitlines():
        log.info("%s", line)
    if returncode != 0:
        errors = [line for line in tail if line.startswith("feedrank: error:")]
        reason = errors[-1] if errors else (tail[-1] if tail else "no output")
        raise FeedrankCommandError(argv, returncode, reason)
    return stdout


class GateFailed(RuntimeError):
    """A validation gate found a breach: the same data fails again, so never retry it."""


def run_gate(*args: str) -> str:
    """:func:`run_feedrank` for a validation gate (``feedrank validate ...``).

    Raises:
        GateFailed: the gate found a breach (its one-line reason); the DAG turns this into
            ``AirflowFailException`` so the task fails at once instead of retrying.
        FeedrankCommandError: any other failure (worth a retry).
    """
    try:
        return run_feedrank(*args)
    except FeedrankCommandError as exc:
        if GATE_FAILED in exc.reason:
            raise GateFailed(exc.reason.removeprefix("feedrank: error: ")) from exc
        raise


def maybe_fail_once(dag_id: str, task_id: str, try_number: int) -> None:
    """Fail the first try of the task named by :data:`FAULT_ENV` (tests' fault hook)."""
    wanted = {name.strip() for name in os.environ.get(FAULT_ENV, "").split(",") if name.strip()}
    if try_number <= 1 and (task_id in wanted or f"{dag_id}.{task_id}" in wanted):
        raise InjectedFault(f"{FAULT_ENV}: injected failure of {dag_id}.{task_id}, try 1")


def _iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def materialize_window(start: dt.datetime, end: dt.datetime) -> None:
    """Register ``feature_repo/`` (idempotent) and materialize ``[start, end]`` online."""
    run_feedrank("feast-apply")
    run_feedrank("materialize", "--start", _iso(start), "--end", _iso(end))


def run_feedrank_json(*args: str) -> dict:
    """:func:`run_feedrank` for commands that print one JSON document on stdout."""
    out = run_feedrank(*args)
    try:
        return json.loads(out)
    except ValueError as exc:
        raise ValueError(f"`feedrank {args[0]}` printed no JSON: {out[-300:]!r}") from exc


def monitor_day(day: dt.date) -> Path:
    """Run ``feedrank monitor --date D``, log what it checked and return its report's path.

    A day whose every check was skipped (no served impression carries a logged feature
    vector, as in a fresh backfill of simulated days) is logged as nothing to check.

    Raises:
        FeedrankCommandError: on a breach its ``reason`` holds :data:`MONITOR_BREACH`, the
            breached checks and the report's path; any other failure too.
    """
    out = run_feedrank("monitor", "--date", day.isoformat())
    paths = [
        line.removeprefix("report: ") for line in out.splitlines() if line.startswith("report: ")
    ]
    if not paths:
        raise ValueError(f"`feedrank monitor` printed no report path: {out[-300:]!r}")
    path = Path(paths[-1])
    report = json.loads(path.read_text())
    statuses = {
        name: section["status"]
        for name, section in report.items()
        if isinstance(section, dict) and "status" in section
    }
    checked = [name for name, status in statuses.items() if not status.startswith("skipped")]
    summary = "; ".join(f"{name}: {status}" for name, status in statuses.items())
    outcome = "no breach" if checked else "nothing to check"
    log.info("monitoring %s: %s (%s); report %s", day, outcome, summary, path)
    return path


def model_version_for(training_run: str | Path) -> str:
    """Registry version name for a model trained on ``training_run``: deterministic.

    ``v<last day>-<manifest sha256[:12]>``: sorts by day like the registry's timestamp
    names, and the same training data (same manifest bytes) always gives the same name.
    """
    from feedrank.feature_spec import TRAINING_MANIFEST

    run = Path(training_run)
    manifest = (run / TRAINING_MANIFEST).read_bytes()
    last_day = run.name.rsplit("_", 1)[-1].replace("-", "")
    return f"v{last_day}-{hashlib.sha256(manifest).hexdigest()[:12]}"
