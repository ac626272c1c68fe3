"""Asks Airflow's own scheduler which scheduled task instances it would queue now.

Run as ``python pool_probe.py`` with a run folder's Airflow environment (a migrated SQLite DB).
It parses dags/, stores both DAGs, creates one run of each with its ``materialize`` task
scheduled, and prints ``POOL_PROBE {...}`` with the (dag_id, task_id) pairs that
``SchedulerJobRunner._executable_task_instances_to_queued`` picks, before and after the first
picked one finishes.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

DAGS = Path(__file__).resolve().parents[2] / "dags"
sys.path.insert(0, str(DAGS))


def main() -> None:
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dag import DagModel
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import update

    DagBundlesManager().sync_bundles_to_db()  # the dags-folder bundle the DAG rows refer to
    bag = BundleDagBag(dag_folder=DAGS, bundle_path=DAGS, bundle_name="dags-folder")
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    day = dt.datetime(2026, 11, 3, tzinfo=dt.UTC)
    with create_session() as session:
        tis = []
        for dag_id in ("feed_ranking_retrain", "feature_materialization"):
            session.get(DagModel, dag_id).is_paused = False  # new DAGs start paused
            dag = SerializedDagModel.get_dag(dag_id, session=session)
            run = dag.create_dagrun(
                run_id=f"pool-probe-{dag_id}",
                logical_date=day,
                data_interval=(day, day + dt.timedelta(hours=1)),
                run_after=day,
                run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.TEST,
                state=DagRunState.RUNNING,
                session=session,
            )
            ti = run.get_task_instance("materialize", session=session)
            ti.state = TaskInstanceState.SCHEDULED
            tis.append(ti)
        session.flush()
        runner = SchedulerJobRunner(job=Job())
        first = runner._executable_task_instances_to_queued(max_tis=32, session=session)
        second = runner._executable_task_instances_to_queued(max_tis=32, session=session)
        for ti in first:  # the first writer finishes: its slot is free again
            session.execute(
                update(TI)
                .where(TI.dag_id == ti.dag_id, TI.run_id == ti.run_id, TI.task_id == ti.task_id)
                .values(state=TaskInstanceState.SUCCESS)
            )
        session.flush()
        third = runner._executable_task_instances_to_queued(max_tis=32, session=session)
        pairs = lambda found: sorted([t.dag_id, t.task_id] for t in found)  # noqa: E731
        print(
            "POOL_PROBE "
            + json.dumps({"first": pairs(first), "second": pairs(second), "third": pairs(third)})
        )
        session.rollback()


if __name__ == "__main__":
    main()
