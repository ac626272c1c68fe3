"""Run ``dag.test()`` in a child process and read back what happened.

``dag.test()`` runs in a fresh interpreter (``run_dag.py``) because Airflow reads AIRFLOW_HOME
and its metadata DB location once, at import: a child process lets each test module use its own
temporary run folder (``FEEDRANK_PATHS__HOME``) and SQLite DB without touching the session's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedrank.config import PROJECT_ROOT

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
