"""The DAGs as Airflow parses them: import, shape, schedules, retries; and the interval rule."""

from __future__ import annotations

import ast
import datetime as dt
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from feedrank.config import PROJECT_ROOT
from feedrank.errors import FeedrankError
from feedrank.lake import landed_through, mark_landed_through

if TYPE_CHECKING:
    from airflow.dag_processing.dagbag import BundleDagBag

RETRAIN = "feed_ranking_retrain"
MATERIALIZE = "feature_materialization"
RETRAIN_CHAIN = [
    "wait_for_landed_data",
    "validate",
    "features",
    "validate_features",
    "training_data",
    "train",
    "evaluate",
    "promote",
    "materialize",
]
# Beside the chain: after the features it recomputes from, and nothing waits for it.
MONITOR = "monitor"


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


@pytest.mark.unit
def test_dagbag_imports_both_dags_without_errors(dagbag: BundleDagBag) -> None:
    assert dagbag.import_errors == {}
    assert {RETRAIN, MATERIALIZE} <= set(dagbag.dag_ids)


@pytest.mark.unit
def test_retrain_dag_is_the_pipeline_chain(dagbag: BundleDagBag) -> None:
    dag = dagbag.dags[RETRAIN]
    assert sorted(dag.task_ids) == sorted([*RETRAIN_CHAIN, MONITOR])
    for upstream, downstream in itertools.pairwise(RETRAIN_CHAIN):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    # Nothing skips a step: every task depends (transitively) on every earlier one, and none
    # on the monitor (training never waits for it).
    for index, task_id in enumerate(RETRAIN_CHAIN):
        upstream = dag.get_task(task_id).get_flat_relative_ids(upstream=True)
        assert upstream == set(RETRAIN_CHAIN[:index]), task_id
    # A refused promotion (promote skipped) must not stop materialization; a failure must.
    assert dag.get_task("materialize").trigger_rule == "none_failed"
    assert all(dag.get_task(t).trigger_rule == "all_success" for t in RETRAIN_CHAIN[:-1])


@pytest.mark.unit
def test_monitor_hangs_off_features_and_blocks_nothing(dagbag: BundleDagBag) -> None:
    """A breach fails ``monitor`` alone: train → promote → materialize run as without it."""
    dag = dagbag.dags[RETRAIN]
    monitor = dag.get_task(MONITOR)
    assert monitor.upstream_task_ids == {"features"}
    assert monitor.get_flat_relative_ids(upstream=True) == set(RETRAIN_CHAIN[:3])
    assert monitor.downstream_task_ids == set()
    assert monitor.trigger_rule == "all_success"
    for task_id in ("train", "materialize"):
        assert MONITOR not in dag.get_task(task_id).get_flat_relative_ids(upstream=True)


@pytest.mark.unit
def test_schedules_intervals_and_run_policy(dagbag: BundleDagBag) -> None:
    from airflow.sdk import CronDataIntervalTimetable

    retrain, hourly = dagbag.dags[RETRAIN], dagbag.dags[MATERIALIZE]
    assert retrain.timetable == CronDataIntervalTimetable("0 0 * * *", timezone="UTC")
    assert hourly.timetable == CronDataIntervalTimetable("0 * * * *", timezone="UTC")
    for dag in (retrain, hourly):
        # Backfills run one interval at a time, oldest first; catchup is a deliberate backfill.
        assert dag.max_active_runs == 1
        assert dag.catchup is False
    assert hourly.task_ids == ["materialize"]
    sensor = retrain.get_task("wait_for_landed_data")
    assert sensor.mode == "reschedule"
    assert sensor.timeout > 0


@pytest.mark.unit
def test_every_task_retries_with_exponential_backoff(dagbag: BundleDagBag) -> None:
    for dag_id in (RETRAIN, MATERIALIZE):
        for task in dagbag.dags[dag_id].tasks:
            assert task.retries >= 2, task.task_id
            assert task.retry_exponential_backoff >= 2.0, task.task_id
            assert dt.timedelta(0) < task.retry_delay < task.max_retry_delay, task.task_id
            assert task.execution_timeout is not None, task.task_id


@pytest.mark.unit
def test_parsing_the_dags_imports_no_heavy_library() -> None:
    """DAG files are parsed every few seconds: no Spark, Feast, XGBoost or pandas at parse."""
    probe = """
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
dags = Path(sys.argv[1])
bag = BundleDagBag(dag_folder=dags, bundle_path=dags, bundle_name="dags-folder")
heavy = ("pyspark", "feast", "xgboost", "pandas", "sklearn", "kafka", "feedrank")
print(json.dumps({"dags": sorted(bag.dag_ids), "errors": bag.import_errors,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe, str(PROJECT_ROOT / "dags")],
        capture_output=True,
        text=True,
        check=True,
        timeout=180,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    assert report["dags"] == sorted([RETRAIN, MATERIALIZE])
    assert report["heavy"] == []


@pytest.mark.unit
def test_dag_code_never_reads_the_clock_or_holds_a_connection_string() -> None:
    """Tasks take their dates from the data interval; endpoints come from settings."""
    for path in sorted((PROJECT_ROOT / "dags").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in {"now", "utcnow", "today"}, (path.name, node.lineno)
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert "://" not in node.value, (path.name, node.lineno)


# ------------------------------------------------------------------ which days a run processes


@pytest.mark.unit
def test_scheduled_daily_interval_processes_its_logical_day() -> None:
    import feedrank_tasks as ft

    days = ft.interval_days(_utc(2026, 11, 3), _utc(2026, 11, 4))
    assert (days.first, days.last) == (dt.date(2026, 11, 3), dt.date(2026, 11, 3))
    assert list(days) == [dt.date(2026, 11, 3)]


@pytest.mark.unit
@pytest.mark.parametrize(
    "logical", [_utc(2026, 11, 4), _utc(2026, 11, 4, 13, 30), _utc(2026, 11, 4, 23, 59)]
)
def test_zero_length_interval_processes_last_complete_day(logical: dt.datetime) -> None:
    import feedrank_tasks as ft

    days = ft.interval_days(logical, logical)
    assert list(days) == [dt.date(2026, 11, 3)]


@pytest.mark.unit
def test_multi_day_interval_and_training_window() -> None:
    import feedrank_tasks as ft

    days = ft.interval_days(_utc(2026, 11, 2), _utc(2026, 11, 5))
    assert list(days) == [dt.date(2026, 11, 2), dt.date(2026, 11, 3), dt.date(2026, 11, 4)]
    window = ft.interval_days(_utc(2026, 11, 4), _utc(2026, 11, 5)).widen(2)
    assert (window.start, window.end) == ("2026-11-02", "2026-11-04")


@pytest.mark.unit
def test_hourly_windows() -> None:
    import feedrank_tasks as ft

    scheduled = ft.interval_window(_utc(2026, 11, 3, 5), _utc(2026, 11, 3, 6), ft.HOUR)
    assert scheduled == (_utc(2026, 11, 3, 5), _utc(2026, 11, 3, 6))
    manual = ft.interval_window(_utc(2026, 11, 3, 5, 20), _utc(2026, 11, 3, 5, 20), ft.HOUR)
    assert manual == (_utc(2026, 11, 3, 4), _utc(2026, 11, 3, 5))
    naive = ft.interval_window(dt.datetime(2026, 11, 3, 5), dt.datetime(2026, 11, 3, 6), ft.HOUR)
    assert naive == scheduled


@pytest.mark.unit
def test_airflow_pendulum_datetimes_are_accepted() -> None:
    """The task context carries pendulum datetimes, in any time zone."""
    import feedrank_tasks as ft
    import pendulum

    start = pendulum.datetime(2026, 11, 3, 1, tz="Europe/Paris")  # 2026-11-03 00:00 UTC
    days = ft.interval_days(start, start.add(days=1))
    assert list(days) == [dt.date(2026, 11, 3)]
    assert list(ft.interval_days(start, start)) == [dt.date(2026, 11, 2)]


@pytest.mark.unit
def test_runs_without_a_logical_date_or_with_a_reversed_interval_are_refused() -> None:
    import feedrank_tasks as ft

    with pytest.raises(ValueError, match="logical date"):
        ft.interval_days(None, None)
    with pytest.raises(ValueError, match="before it starts"):
        ft.interval_days(_utc(2026, 11, 4), _utc(2026, 11, 3))


@pytest.mark.unit
def test_a_day_is_landed_with_a_parquet_file_and_a_mark_past_its_end(tmp_path: Path) -> None:
    import feedrank_tasks as ft

    days = ft.Days(dt.date(2026, 11, 3), dt.date(2026, 11, 3))
    tables = ("impressions", "engagements")
    assert ft.not_landed(tmp_path, tables, days) == [
        "impressions landed through 2026-11-04T00:00:00+00:00 (never marked)",
        "impressions/date=2026-11-03",
        "engagements landed through 2026-11-04T00:00:00+00:00 (never marked)",
        "engagements/date=2026-11-03",
    ]
    for table in tables:
        (tmp_path / table / "date=2026-11-03").mkdir(parents=True)
        (tmp_path / table / "date=2026-11-03" / "part-b0-0.parquet").write_bytes(b"x")
    # The first micro-batch of the day is in: a file, but landing has not passed midnight.
    evening = dt.datetime(2026, 11, 3, 23, 50, tzinfo=dt.UTC)
    for table in tables:
        mark_landed_through(tmp_path, table, evening, by="landing")
    assert ft.not_landed(tmp_path, tables, days) == [
        f"{t} landed through 2026-11-04T00:00:00+00:00 (marked {evening.isoformat()})"
        for t in tables
    ]
    after = dt.datetime(2026, 11, 4, 0, 5, tzinfo=dt.UTC)
    mark_landed_through(tmp_path, "impressions", after, by="landing")
    mark_landed_through(tmp_path, "engagements", after, by="landing")
    assert ft.not_landed(tmp_path, tables, days) == []
    # The mark never moves back (a rerun of an older landing, a smaller backfill).
    assert mark_landed_through(tmp_path, "impressions", evening, by="backfill") == after
    assert landed_through(tmp_path, "impressions") == after
    with pytest.raises(FeedrankError, match="timezone"):
        mark_landed_through(tmp_path, "impressions", dt.datetime(2026, 11, 5), by="landing")


@pytest.mark.unit
def test_fault_hook_fails_only_the_named_task_on_its_first_try(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import feedrank_tasks as ft

    monkeypatch.setenv(ft.FAULT_ENV, "feed_ranking_retrain.features")
    with pytest.raises(ft.InjectedFault):
        ft.maybe_fail_once("feed_ranking_retrain", "features", 1)
    ft.maybe_fail_once("feed_ranking_retrain", "features", 2)
    ft.maybe_fail_once("feed_ranking_retrain", "validate", 1)
    ft.maybe_fail_once("feature_materialization", "features", 1)
    monkeypatch.delenv(ft.FAULT_ENV)
    ft.maybe_fail_once("feed_ranking_retrain", "features", 1)


@pytest.mark.unit
def test_the_gates_check_what_exists_when_they_run(dagbag: BundleDagBag) -> None:
    """``validate`` (lake) runs before ``features``; the feature gate right after it."""
    dag = dagbag.dags[RETRAIN]
    assert dag.get_task("validate").downstream_task_ids == {"features"}
    assert dag.get_task("validate_features").upstream_task_ids == {"features"}
    assert "validate_features" in dag.get_task("training_data").upstream_task_ids


@pytest.mark.unit
def test_gate_failure_wording_is_the_one_the_validate_job_raises() -> None:
    import feedrank_tasks as ft

    from jobs.validate import GATE_FAILED

    assert ft.GATE_FAILED == GATE_FAILED


@pytest.mark.unit
def test_a_breached_gate_fails_the_task_without_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``feedrank validate`` breach (features of the day before, none of the day)
    becomes ``AirflowFailException`` (no retry); a command that cannot run is retried."""
    import feed_ranking_retrain as retrain
    import feedrank_tasks as ft
    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.sdk.exceptions import AirflowFailException

    from feedrank import lake
    from feedrank.feature_spec import VIEWS

    view = next(iter(VIEWS))
    schema = lake.feature_table_schema(view)
    folder = lake.partition_dir(tmp_path / "features", view, dt.date(2026, 11, 2))
    folder.mkdir(parents=True)
    row = {f.name: 0 for f in schema if not pa.types.is_timestamp(f.type)}
    pq.write_table(pa.Table.from_pylist([row], schema=schema), folder / "part-0.parquet")
    monkeypatch.setenv("FEEDRANK_PATHS__HOME", str(tmp_path))
    with pytest.raises(AirflowFailException, match=rf"^{ft.GATE_FAILED} 2026-11-03") as info:
        retrain._gate("--features", "--date", "2026-11-03")
    assert f"missing partition in {view}" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ft.FeedrankCommandError):
        retrain._gate("--date", "not-a-date")


@pytest.mark.unit
def test_a_failing_command_reports_its_one_line_reason() -> None:
    import feedrank_tasks as ft

    with pytest.raises(ft.FeedrankCommandError) as info:
        ft.run_feedrank("no-such-command")
    assert info.value.returncode == 2
    assert "no-such-command" in info.value.reason
