"""The retrain DAG's ``monitor`` task, its callable run on the monitoring world.

The callable runs ``feedrank monitor`` in a child process, as the task does, against this
world's run folder (``FEEDRANK_PATHS__HOME``); thresholds are forced through the environment
(``FEEDRANK_MONITORING__MIN_AUC``). That train → promote → materialize never wait for the task
is the structure test's part (tests/dags/test_dag_structure.py).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable

import pytest
from monitor_names import DAY, START, MonitorWorld

from feedrank.config import PROJECT_ROOT, Settings
from jobs.monitor import CHECKS, report_path

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DAGS_DIR = PROJECT_ROOT / "dags"


@pytest.fixture(scope="module")
def monitor_task() -> Callable[..., list[str]]:
    """The ``monitor`` task's callable, from the DAG as the dag processor parses it."""
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(dag_folder=DAGS_DIR, bundle_path=DAGS_DIR, bundle_name="dags-folder")
    assert bag.import_errors == {}
    return bag.dags["feed_ranking_retrain"].get_task("monitor").python_callable


@pytest.fixture
def world_env(
    served_lake: MonitorWorld, monitor_model: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The task's child commands resolve the monitoring world's run folder and model."""
    monkeypatch.setenv("FEEDRANK_PATHS__HOME", str(served_lake.settings.paths.home))
    return served_lake.settings


def _days(first: dt.date, last: dt.date) -> dict[str, dt.datetime]:
    """A scheduled run's data interval covering ``first`` .. ``last``."""
    start = dt.datetime.combine(first, dt.time(), dt.UTC)
    end = dt.datetime.combine(last, dt.time(), dt.UTC) + dt.timedelta(days=1)
    return {"data_interval_start": start, "data_interval_end": end}


def test_a_day_with_nothing_served_passes_and_says_so(
    world_env: Settings,
    monitor_task: Callable[..., list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # START's impressions carry no logged vectors, as after a fresh backfill of simulated days.
    with caplog.at_level(logging.INFO, logger="feedrank.dags"):
        reports = monitor_task(**_days(START, START))

    path = report_path(world_env, START)
    assert reports == [str(path)]
    assert f"monitoring {START}: nothing to check" in caplog.text
    assert f"report {path}" in caplog.text
    report = json.loads(path.read_text())
    assert report["ok"] is True
    assert all(report[check]["status"].startswith("skipped") for check in CHECKS)


def test_a_breached_threshold_fails_the_task_with_one_line(
    world_env: Settings, monitor_task: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("FEEDRANK_MONITORING__MIN_AUC", "0.99")
    # AirflowFailException: failed at once, no retry (the same data would breach again).
    with pytest.raises(AirflowFailException) as info:
        monitor_task(**_days(DAY, DAY))

    message = str(info.value)
    path = report_path(world_env, DAY)
    report = json.loads(path.read_text())
    assert report["thresholds"]["min_auc"] == 0.99
    assert report["ok"] is False
    assert [line.split(" ", 1)[0] for line in report["breaches"]] == ["auc"]
    assert "\n" not in message
    assert f"monitoring breached for {DAY}: {report['breaches'][0]}; report {path}" in message
