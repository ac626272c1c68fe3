"""Run ``dag.test()`` in a child process and read back what happened.

``dag.test()`` runs in a fresh interpreter (``run_dag.py``) because Airflow reads AIRFLOW_HOME
and its metadata DB location once, at import: a child process lets each test module use its own
temporary run folder (``FEEDRANK_PATHS__HOME``) and SQLite DB without touching the session's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedrank.config import PROJECT_ROOT
from feedrank.lake import mark_landed_through, midnight

DAGS_DIR = PROJECT_ROOT / "dags"
RUNNER = Path(__file__).resolve().parent / "run_dag.py"


@dataclass
class DagTestRun:
    """What one ``dag.test()`` left behind."""

    state: str
    tasks: dict[str, dict[str, Any]]
    data_interval: list[str | None]
    wall_s: float
    log: str


def run_dag_test(
    home: Path,
    dag_id: str,
    logical_date: str,
    conf: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    fast_retries: bool = False,
    mark_success: str | None = None,
    timeout_s: float = 1800,
) -> DagTestRun:
    """``dag.test()`` of ``dag_id`` at ``logical_date`` against the run folder ``home``.

    Args:
        home: run folder (``FEEDRANK_PATHS__HOME``); its ``airflow/`` holds the SQLite DB.
        dag_id: DAG to run.
        logical_date: ISO date or datetime (UTC).
        conf: the run's conf (DAG params).
        env: extra environment for the run (e.g. the fault hook).
        fast_retries: retry after 1 s instead of the DAG's minutes (the production values
            are asserted by the structure tests).
        mark_success: regex of task ids dag.test() marks successful instead of running.
        timeout_s: kill the run after this long.
    """
    child_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AIRFLOW") and not key.startswith("_AIRFLOW")
    }
    child_env.update({"FEEDRANK_PATHS__HOME": str(home), **(env or {})})
    argv = [sys.executable, str(RUNNER), dag_id, logical_date, "--conf", json.dumps(conf or {})]
    if fast_retries:
        argv.append("--fast-retries")
    if mark_success:
        argv += ["--mark-success", mark_success]
    started = time.perf_counter()
    result = subprocess.run(
        argv, env=child_env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    wall_s = time.perf_counter() - started
    output = result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("DAG_TEST_RESULT ")]
    if result.returncode != 0 or not lines:
        raise AssertionError(f"dag.test() of {dag_id} did not finish:\n{output[-6000:]}")
    payload = json.loads(lines[-1].removeprefix("DAG_TEST_RESULT "))
    return DagTestRun(
        state=payload["state"],
        tasks=payload["tasks"],
        data_interval=payload["data_interval"],
        wall_s=wall_s,
        log=output,
    )


# A small world keeps the DAG modules short on 2 cores (seed 4 at 250 users passes the
# production validation gate on every day; smaller worlds trip it with days without new
# follows or rare languages, and since each calendar day has its own draw, seed 1's
# 2026-11-04 has 17.2 % of users without an impression against 11.2 % the day before, past
# the 5-point null-rate limit of the 1-day rates). Its rare negative-feedback head does not
# reach the production promotion floor (measured: AUC 0.468 < 0.55 on this world), so the
# gate's AUC floor is off: these tests check the orchestration, not model quality. Its rare
# heads have a few dozen positives a day, so their calibration is mostly the day's draw
# (seed 4's first model: reply 1.43, negative 1.53): the calibration band is widened to
# ±0.75. The gate's other checks (finite metrics, beat-or-tie) stay as configured.
SMALL_WORLD = {
    "FEEDRANK_PROFILE": "local",
    "FEEDRANK_SIMULATOR__USERS": "250",
    "FEEDRANK_SIMULATOR__CANDIDATES_PER_REQUEST": "40",
    "FEEDRANK_SIMULATOR__DAYS": "3",
    "FEEDRANK_SIMULATOR__SEED": "4",
    "FEEDRANK_SPARK__MASTER": "local[2]",
    "FEEDRANK_SPARK__SHUFFLE_PARTITIONS": "2",
    "FEEDRANK_TRAINING__N_ESTIMATORS": "40",
    "FEEDRANK_TRAINING__SEARCH_BUDGET_S": "0",
    "FEEDRANK_TRAINING__PROMOTE_MIN_AUC": "0.0",
    "FEEDRANK_TRAINING__PROMOTE_CALIBRATION_TOLERANCE": "0.75",
}


def simulate(home: Path, env: dict[str, str], out: Path | None = None) -> Path:
    """``feedrank simulate`` into ``out`` (default: ``home``'s lake); returns the lake folder."""
    feedrank = Path(sys.executable).with_name("feedrank")
    argv = [str(feedrank), "simulate", "--quiet"]
    if out is not None:
        argv += ["--out", str(out)]
    subprocess.run(
        argv,
        env={**os.environ, **env, "FEEDRANK_PATHS__HOME": str(home)},
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out if out is not None else home / "lake"


def land_through(source_lake: Path, lake: Path, last_day: str) -> list[str]:
    """Copy every ``<table>/date=D`` of ``source_lake`` with ``D <= last_day`` not yet in
    ``lake``, as landing publishes a day: each partition renamed into place whole, then every
    table marked landed through the midnight after ``last_day`` (what landing does once it
    has read past it).

    Returns:
        the ``table/date=D`` partitions added.
    """
    added = []
    for part in sorted(source_lake.glob("*/date=*")):
        day = part.name.removeprefix("date=")
        target = lake / part.parent.name / part.name
        if day > last_day or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{part.name}.tmp")
        shutil.copytree(part, tmp)
        tmp.rename(target)
        added.append(f"{part.parent.name}/{part.name}")
    end = midnight(dt.date.fromisoformat(last_day) + dt.timedelta(days=1))
    for table in sorted({p.parent.name for p in source_lake.glob("*/date=*")}):
        mark_landed_through(lake, table, end, by="test landing")
    return added


def task_states(home: Path, dag_id: str) -> dict[str, str]:
    """Task id → state of the newest run of ``dag_id`` in the run folder's metadata DB."""
    db = home / "airflow" / "airflow.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        row = conn.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        if row is None:
            return {}
        rows = conn.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag_id, row[0]),
        ).fetchall()
    return {task_id: str(state) for task_id, state in rows}


def run_until_task_state(
    home: Path,
    dag_id: str,
    logical_date: str,
    task_id: str,
    state: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 600,
) -> dict[str, str]:
    """Start ``dag.test()`` and stop it once ``task_id`` reached ``state``.

    For a run that would otherwise wait for hours (a sensor in reschedule mode with nothing
    to find); the metadata DB keeps what the run did until then.

    Returns:
        every task's state in that run when it was stopped.
    """
    child_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AIRFLOW") and not key.startswith("_AIRFLOW")
    }
    child_env.update({"FEEDRANK_PATHS__HOME": str(home), **(env or {})})
    log = home / f"dag-test-{dag_id}-{logical_date}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(RUNNER), dag_id, logical_date],
            env=child_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                states = task_states(home, dag_id) if (home / "airflow").is_dir() else {}
                if states.get(task_id) == state:
                    return states
                time.sleep(1)
            raise AssertionError(
                f"{dag_id}.{task_id} never reached {state}:\n{log.read_text()[-6000:]}"
            )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
