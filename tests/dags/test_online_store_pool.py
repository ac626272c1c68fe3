"""One writer of the online store at a time: both materialize tasks share a one-slot pool that
the project declares and every migrated Airflow DB holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from feedrank.airflow_pools import ONLINE_STORE_POOL, declared_pools

if TYPE_CHECKING:
    from airflow.dag_processing.dagbag import BundleDagBag

WRITERS = {("feed_ranking_retrain", "materialize"), ("feature_materialization", "materialize")}


@pytest.mark.unit
def test_the_online_store_writers_share_a_one_slot_pool(dagbag: BundleDagBag) -> None:
    import feedrank_tasks

    assert feedrank_tasks.ONLINE_STORE_POOL == ONLINE_STORE_POOL  # the DAGs import no feedrank
    assert declared_pools()[ONLINE_STORE_POOL]["slots"] == 1
    in_pool = {
        (dag_id, task.task_id)
        for dag_id, dag in dagbag.dags.items()
        for task in dag.tasks
        if task.pool == ONLINE_STORE_POOL
    }
    assert in_pool == WRITERS
    for dag_id, task_id in WRITERS:
        assert dagbag.dags[dag_id].get_task(task_id).pool_slots == 1


@pytest.mark.integration
def test_a_migrated_metadata_db_holds_the_declared_pool(airflow_db: dict[str, str]) -> None:
    airflow = str(Path(sys.executable).parent / "airflow")
    result = subprocess.run(
        [airflow, "pools", "get", ONLINE_STORE_POOL, "--output", "json"],
        env={**os.environ, **airflow_db},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [pool] = json.loads(result.stdout)
    assert pool["pool"] == ONLINE_STORE_POOL
    assert int(pool["slots"]) == 1


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_scheduler_queues_one_writer_at_a_time(tmp_path: Path) -> None:
    """Both materialize tasks scheduled at once: Airflow's scheduler queues one, and the other
    only once the first has finished."""
    from feedrank.config import PathsConfig, get_settings
    from feedrank.services import airflow_env, airflow_migrate

    settings = get_settings().model_copy(update={"paths": PathsConfig(home=tmp_path)})
    airflow_migrate(settings)  # a fresh DB: the pool comes with the migration
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("pool_probe.py"))],
        env={**env, **airflow_env(settings), "FEEDRANK_PATHS__HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("POOL_PROBE ")]
    assert result.returncode == 0 and lines, (result.stdout + result.stderr)[-4000:]
    probe = json.loads(lines[-1].removeprefix("POOL_PROBE "))
    assert len(probe["first"]) == 1  # one writer queued ...
    assert probe["second"] == []  # ... the other waits while it holds the slot ...
    assert len(probe["third"]) == 1 and probe["third"] != probe["first"]  # ... then runs
    assert {tuple(p) for p in probe["first"] + probe["third"]} == WRITERS
