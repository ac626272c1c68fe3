"""Run one feedrank DAG with ``dag.test()`` on a real SQLite metadata DB; print the outcome.

Usage: ``python tests/dags/run_dag.py DAG_ID LOGICAL_DATE [--conf JSON] [--fast-retries]
[--mark-success REGEX]``

The run folder comes from ``FEEDRANK_PATHS__HOME``; Airflow's environment (AIRFLOW_HOME in the
run folder, dags folder, SQLite DB) is derived from it with ``feedrank.services.airflow_env``
before Airflow is imported, and the DB is migrated if needed. The last stdout line is
``DAG_TEST_RESULT {json}``: run state, data interval and every task's state and try number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path


def main() -> None:
    """Parse arguments, prepare Airflow for the run folder, run the DAG once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dag_id")
    parser.add_argument("logical_date", help="ISO date or datetime, UTC")
    parser.add_argument("--conf", default="{}", help="run conf (DAG params) as JSON")
    parser.add_argument("--fast-retries", action="store_true", help="retry after 1 s")
    parser.add_argument(
        "--mark-success", default=None, help="regex of task ids marked success, not run"
    )
    args = parser.parse_args()

    from feedrank.config import get_settings
    from feedrank.services import airflow_env, airflow_migrate

    settings = get_settings()
    os.environ.update(airflow_env(settings))
    airflow_migrate(settings)

    from airflow.dag_processing.dagbag import BundleDagBag

    dags_dir = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    bag = BundleDagBag(dag_folder=dags_dir, bundle_path=dags_dir, bundle_name="dags-folder")
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag = bag.dags[args.dag_id]
    if args.fast_retries:
        for task in dag.tasks:
            task.retry_delay = dt.timedelta(seconds=1)
            task.max_retry_delay = dt.timedelta(seconds=1)
    logical_date = dt.datetime.fromisoformat(args.logical_date)
    if logical_date.tzinfo is None:
        logical_date = logical_date.replace(tzinfo=dt.UTC)
    run = dag.test(
        logical_date=logical_date,
        run_conf=json.loads(args.conf),
        mark_success_pattern=args.mark_success,
    )
    tasks = {
        ti.task_id: {"state": str(ti.state), "try_number": ti.try_number}
        for ti in run.get_task_instances()
    }
    interval = [
        run.data_interval_start.isoformat() if run.data_interval_start else None,
        run.data_interval_end.isoformat() if run.data_interval_end else None,
    ]
    result = {"state": str(run.state), "tasks": tasks, "data_interval": interval}
    print("DAG_TEST_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
