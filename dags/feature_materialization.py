"""Hourly materialization: load the feature values valid during one UTC hour into the online
store.

Which hour: a scheduled run has the data interval ``[H, H+1h)`` (``CronDataIntervalTimetable``,
logical date ``H``) and materializes ``[H, H+1h]``; a manual run or ``dag.test()`` with a
zero-length interval at ``L`` materializes the last complete hour before ``L`` (rule in
``feedrank_tasks``). Feast's window includes both ends, so the row stamped exactly at the hour
boundary (the daily snapshots carry ``D+1 00:00``) is loaded by both neighbouring runs: harmless,
``feedrank materialize`` with an explicit window writes the same values every time.

The task runs ``feedrank feast-apply`` (idempotent) and ``feedrank materialize --start --end``
in child processes, the same commands a person runs, with the worker's ``FEEDRANK_*``
environment choosing the profile's online store (SQLite or Redis). Streaming views are not
touched: their online values come from the push stream (``feedrank stream-features``).

The task runs in the ``feedrank_online_store`` pool (one slot, ``infra/airflow/pools.json``),
shared with the retrain DAG's ``materialize``: one writer of the online store at a time.

``catchup`` is off and one run at a time: the online store needs the newest values, and an old
hour can be replayed deliberately with ``airflow backfill create``.
"""

from __future__ import annotations

import datetime as dt

import feedrank_tasks as ft
from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task

DAG_ID = "feature_materialization"

DEFAULT_ARGS = {
    "owner": "feedrank",
    "retries": 3,
    "retry_delay": dt.timedelta(minutes=1),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=10),
    "execution_timeout": dt.timedelta(minutes=45),
}


@dag(
    dag_id=DAG_ID,
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["feedrank", "features"],
    doc_md=__doc__,
)
def feature_materialization() -> None:
    """Hourly: offline feature tables → online store for the run's hour."""

    # One writer of the online store at a time, shared with feed_ranking_retrain.materialize.
    @task(pool=ft.ONLINE_STORE_POOL)
    def materialize(
        data_interval_start: dt.datetime | None = None,
        data_interval_end: dt.datetime | None = None,
    ) -> dict[str, str]:
        """Materialize ``[start, end]`` of the run's hour (both ends included)."""
        start, end = ft.interval_window(data_interval_start, data_interval_end, ft.HOUR)
        ft.materialize_window(start, end)
        ti = get_current_context()["ti"]
        ft.maybe_fail_once(ti.dag_id, ti.task_id, ti.try_number)
        return {"start": start.isoformat(), "end": end.isoformat()}

    materialize()


feature_materialization()
