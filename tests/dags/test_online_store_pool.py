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
