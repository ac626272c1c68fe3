"""The retrain DAG on consecutive days, on ONE run folder, the way its schedule runs it.

Days arrive one at a time: before the run of day ``D`` the lake holds the landed days up to
``D`` (copied from a simulated world partition by partition, as landing publishes them). Each
run gets the scheduled interval ``[D, D+1)`` and trains on its own window; the hourly
materialization DAG runs between the days. Then a rerun of the last day (nothing changes)
and a day whose data has not landed (the sensor waits; nothing fails).

Before issue 32 the second day failed at ``validate``: the gate also checked the feature
tables of ``D``, which only that run's ``features`` task builds, against ``D-1``'s (built by
the run the day before): "missing partition" for every view. A gate that passes only on a
fresh run folder checks nothing, hence this module.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from dag_helpers import (
    DAGS_DIR,
    SMALL_WORLD,
    DagTestRun,
    land_through,
    run_dag_test,
    run_until_task_state,
    simulate,
)

RETRAIN = "feed_ranking_retrain"
HOURLY = "feature_materialization"
DAYS = ("2026-11-03", "2026-11-04", "2026-11-05")  # the three runs' days
NOT_LANDED = "2026-11-06"  # simulated only up to 2026-11-05: nothing of this day lands
CONF = {"training_days": 3}
ENV = {**SMALL_WORLD, "FEEDRANK_SIMULATOR__DAYS": "5"}  # 2026-11-01..05

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]


def _next(day: str) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()


def _window(day: str) -> str:
    """The training run folder of the run of ``day`` (``training_days`` = 3)."""
    return f"{(dt.date.fromisoformat(day) - dt.timedelta(days=2)).isoformat()}_{day}"


@dataclass
class Day:
    """One day's retrain run and what the registry looked like after it."""

    day: str
    run: DagTestRun
    version: str
    champion_before: str | None
    champion_after: str | None
    versions: list[str]


def _champion(home: Path) -> str | None:
    path = home / "models" / "champion.json"
    return json.loads(path.read_text())["version"] if path.is_file() else None


def _versions(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "models").iterdir() if p.is_dir())


def _retrain(home: Path, day: str) -> Day:
    import sys

    sys.path.insert(0, str(DAGS_DIR))
    import feedrank_tasks as ft

    before = _champion(home) if (home / "models").is_dir() else None
    # dag.test() at D+1 00:00 gets the interval a scheduled run of D has: [D, D+1).
    run = run_dag_test(home, RETRAIN, _next(day), conf=CONF, env=ENV, fast_retries=True)
    print(f"retrain {day}: {run.wall_s:.1f} s, {run.state}")
    failed = {t: s for t, s in run.tasks.items() if s["state"] not in ("success", "skipped")}
    assert not failed, f"{day}: {failed}\n{run.log[-8000:]}"
    version = ft.model_version_for(home / "training" / _window(day))
    return Day(day, run, version, before, _champion(home), _versions(home))


@pytest.fixture(scope="module")
def source_lake(dag_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole simulated world, outside the run folder; days are landed from it."""
    return simulate(dag_home, ENV, out=tmp_path_factory.mktemp("simulated") / "lake")


@pytest.fixture(scope="module")
def days(dag_home: Path, source_lake: Path) -> list[Day]:
    """Three consecutive days, each landed just before its run, hourly runs in between."""
    out = []
    for index, day in enumerate(DAYS):
        assert land_through(source_lake, dag_home / "lake", day), day
        out.append(_retrain(dag_home, day))
        if index < len(DAYS) - 1:
            hourly = run_dag_test(dag_home, HOURLY, f"{_next(day)}T01:00", env=ENV)
            assert hourly.state == "success", hourly.log[-4000:]
            assert hourly.tasks == {"materialize": {"state": "success", "try_number": 1}}
    return out


def test_each_day_succeeds_and_trains_on_its_own_window(dag_home: Path, days: list[Day]) -> None:
    for d in days:
        run = d.run
        assert run.state == "success", (d.day, run.log[-4000:])
        states = {t: s["state"] for t, s in run.tasks.items()}
        # A refused promotion is a skip, never a failure; every other task succeeded once.
        assert states.pop("promote") in {"success", "skipped"}, d.day
        assert set(states.values()) == {"success"}, (d.day, states)
        assert all(s["try_number"] == 1 for s in run.tasks.values()), (d.day, run.tasks)
        assert run.data_interval[0].startswith(d.day), run.data_interval
        assert run.data_interval[1].startswith(_next(d.day)), run.data_interval
        # The model was trained on this day's window, held out on this day.
        meta = json.loads((dag_home / "models" / d.version / "metadata.json").read_text())
        assert Path(meta["training_data"]["run"]).name == _window(d.day)
        assert d.version.startswith("v" + d.day.replace("-", ""))
        # Both gates ran on what existed when they ran, and passed.
        lake_report = dag_home / "reports" / "validate" / f"{d.day}.json"
        assert json.loads(lake_report.read_text())["ok"] is True
        first = dt.date.fromisoformat(_window(d.day).split("_")[0])
        for offset in range(3):
            day = (first + dt.timedelta(days=offset)).isoformat()
            path = dag_home / "reports" / "validate" / "features" / f"{day}.json"
            assert json.loads(path.read_text())["ok"] is True, path
    # One model per day, none lost.
    assert days[-1].versions == sorted(d.version for d in days)


def test_the_champion_pointer_follows_each_days_gate(dag_home: Path, days: list[Day]) -> None:
    for d in days:
        decision = json.loads((dag_home / "reports" / d.version / "promotion.json").read_text())
        state = d.run.tasks["promote"]["state"]
        if decision["promoted"]:
            assert state == "success" and d.champion_after == d.version, d
        else:
            assert state == "skipped" and d.champion_after == d.champion_before, d
    # The first day has no champion to beat (its gate checks the model alone).
    assert days[0].champion_after == days[0].version


@pytest.fixture(scope="module")
def rerun(dag_home: Path, days: list[Day]) -> Day:
    return _retrain(dag_home, DAYS[-1])


def test_a_rerun_of_the_same_day_changes_nothing(
    dag_home: Path, days: list[Day], rerun: Day
) -> None:
    assert rerun.run.state == "success", rerun.run.log[-4000:]
    assert rerun.version == days[-1].version
    assert rerun.versions == days[-1].versions
    assert rerun.champion_after == rerun.champion_before == days[-1].champion_after
    assert "(same training data) already exists; reusing it" in rerun.run.log


def test_a_day_without_landed_data_waits_and_fails_nothing(
    dag_home: Path, days: list[Day], rerun: Day
) -> None:
    states = run_until_task_state(
        dag_home, RETRAIN, _next(NOT_LANDED), "wait_for_landed_data", "up_for_reschedule", ENV
    )
    assert states["wait_for_landed_data"] == "up_for_reschedule"
    # Nothing downstream ran, nothing failed: the run is just waiting.
    assert not {s for s in states.values()} & {"failed", "upstream_failed", "success"}, states
    log = (dag_home / f"dag-test-{RETRAIN}-{_next(NOT_LANDED)}.log").read_text()
    assert f"waiting for feed_requests/date={NOT_LANDED}" in log
