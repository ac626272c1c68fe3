"""``dag.test()`` of the retrain DAG end to end on a small simulated world: real SQLite metadata
DB, real Spark jobs, real XGBoost training, real Feast materialization into SQLite.

One run folder for the module: the first run trains and promotes; the second run of the same
interval, with ``training_data`` forced to fail once after writing, must retry, rewrite the
same bytes and leave the registry as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from dag_helpers import DAGS_DIR, SMALL_WORLD, DagTestRun, run_dag_test

RETRAIN = "feed_ranking_retrain"
# dag.test() at 2026-11-04T00:00 processes 2026-11-03 (the last complete day before it); with
# training_days=3 the window is 2026-11-01..2026-11-03, 2026-11-03 held out for validation.
LOGICAL_DATE = "2026-11-04"
RUN_DAY = "2026-11-03"
CONF = {"training_days": 3}
TRAINING_RUN = "2026-11-01_2026-11-03"
# The gate's AUC floor is off on this small world (dag_helpers.SMALL_WORLD); the refusal test
# below raises it again.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]


def _content_hashes(root: Path) -> dict[str, str]:
    """Row-content hash (``jobs.lake.content_hash``) of every table folder under ``root``.

    Independent of Parquet file bytes and part-file layout: a rerun must give the same rows.
    """
    from jobs.lake import content_hash

    return {
        p.name: content_hash(p)
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".") and any(p.rglob("*.parquet"))
    }


def _online_rows(home: Path) -> dict[str, tuple[int, str]]:
    """Per online table of the SQLite store: row count and a hash of its contents."""
    paths = list(home.rglob("online.db"))
    assert len(paths) == 1, paths
    with sqlite3.connect(paths[0]) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out = {}
        for table in tables:
            rows = db.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2').fetchall()
            out[table] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
    return out


@dataclass
class Outputs:
    """Everything a retrain run leaves behind that a rerun must reproduce."""

    features: dict[str, str]
    training: dict[str, str]
    manifest: dict
    training_runs: list[str]
    versions: list[str]
    champion: dict
    champion_bytes: bytes
    online: dict[str, tuple[int, str]]


def _outputs(home: Path) -> Outputs:
    models = home / "models"
    champion_bytes = (models / "champion.json").read_bytes()
    return Outputs(
        features=_content_hashes(home / "features"),
        training=_content_hashes(home / "training" / TRAINING_RUN),
        manifest=json.loads((home / "training" / TRAINING_RUN / "manifest.json").read_text()),
        training_runs=sorted(p.name for p in (home / "training").iterdir()),
        versions=sorted(p.name for p in models.iterdir() if p.is_dir()),
        champion=json.loads(champion_bytes),
        champion_bytes=champion_bytes,
        online=_online_rows(home),
    )


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {**SMALL_WORLD, "FEEDRANK_PATHS__HOME": str(home), **extra}


@pytest.fixture(scope="module")
def world(dag_home: Path) -> Path:
    """Three simulated days (2026-11-01..03) in the run folder's lake."""
    feedrank = Path(sys.executable).with_name("feedrank")
    subprocess.run(
        [str(feedrank), "simulate", "--quiet"],
        env={**os.environ, **_env(dag_home)},
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (dag_home / "lake" / "impressions" / f"date={RUN_DAY}").is_dir()
    return dag_home


@pytest.fixture(scope="module")
def first_run(world: Path) -> tuple[DagTestRun, Outputs]:
    # Fast retries everywhere: a failing step should surface in seconds, not after 2+4+8 min.
    run = run_dag_test(world, RETRAIN, LOGICAL_DATE, conf=CONF, env=_env(world), fast_retries=True)
    print(f"first dag.test(): {run.wall_s:.1f} s")
    return run, _outputs(world)


@pytest.fixture(scope="module")
def second_run(world: Path, first_run: tuple[DagTestRun, Outputs]) -> tuple[DagTestRun, Outputs]:
    env = _env(world, FEEDRANK_DAG_FAIL_ONCE=f"{RETRAIN}.training_data")
    run = run_dag_test(world, RETRAIN, LOGICAL_DATE, conf=CONF, env=env, fast_retries=True)
    print(f"second dag.test() (training_data fails once): {run.wall_s:.1f} s")
    return run, _outputs(world)


def test_retrain_run_succeeds_promotes_and_materializes(
    world: Path, first_run: tuple[DagTestRun, Outputs]
) -> None:
    run, out = first_run
    assert run.state == "success", run.log[-4000:]
    assert {t: s["state"] for t, s in run.tasks.items()} == {t: "success" for t in run.tasks}, (
        run.tasks
    )
    assert len(run.tasks) == 10
    # The zero-length test interval processed the day before the logical date.
    assert run.data_interval[0] == run.data_interval[1] or run.data_interval[0].startswith(RUN_DAY)
    # One model, named after its training data, is the champion.
    sys.path.insert(0, str(DAGS_DIR))
    import feedrank_tasks as ft

    version = ft.model_version_for(world / "training" / TRAINING_RUN)
    assert out.versions == [version]
    assert out.champion["version"] == version
    assert (world / "reports" / version / "metrics.json").is_file()
    # Every batch view has materialized rows in the online store.
    assert out.online, "no online tables"
    filled = {table: n for table, (n, _) in out.online.items() if n > 0}
    assert len(filled) >= 3, out.online
    # The sensor checked the run day's partitions, and the features cover the window.
    for day in ("2026-11-01", "2026-11-02", RUN_DAY):
        assert any((world / "features").glob(f"*/date={day}")), day
    # Simulated impressions carry no logged feature vectors: the monitor had nothing to check.
    assert (world / "reports" / "monitoring" / f"{RUN_DAY}.json").is_file()
    assert f"monitoring {RUN_DAY}: nothing to check" in run.log


def test_rerun_of_the_same_interval_is_identical_and_promotes_nothing(
    first_run: tuple[DagTestRun, Outputs], second_run: tuple[DagTestRun, Outputs]
) -> None:
    run, again = second_run
    _, before = first_run
    assert run.state == "success", run.log[-4000:]
    assert again.features == before.features
    assert again.training == before.training
    assert again.manifest == before.manifest
    assert again.training_runs == before.training_runs == [TRAINING_RUN]
    assert again.online == before.online
    # No second model and no second promotion: the pointer file is byte-identical.
    assert again.versions == before.versions
    assert again.champion_bytes == before.champion_bytes
    assert run.tasks["train"]["state"] == "success"
    assert run.tasks["promote"]["state"] == "success"


def test_task_failing_once_succeeds_on_retry_without_duplicate_output(
    world: Path, first_run: tuple[DagTestRun, Outputs], second_run: tuple[DagTestRun, Outputs]
) -> None:
    run, again = second_run
    _, before = first_run
    # training_data wrote its run, then "crashed"; its retry rewrote it and the run went on.
    assert run.tasks["training_data"]["state"] == "success"
    assert run.tasks["training_data"]["try_number"] == 2
    assert "injected failure" in run.log
    assert all(s["try_number"] == 1 for t, s in run.tasks.items() if t != "training_data")
    # Exactly one run folder, no temp or leftover siblings, same bytes as before.
    assert sorted(p.name for p in (world / "training").iterdir()) == [TRAINING_RUN]
    assert again.training == before.training


@pytest.fixture(scope="module")
def refused_run(world: Path, second_run: tuple[DagTestRun, Outputs]) -> DagTestRun:
    """A third run of the interval whose gate refuses the model (AUC floor above any model).

    The champion pointer is removed first, as on a registry before its first promotion (with the
    model already champion, promote has nothing to decide). The data steps, training and the
    monitor are marked successful (their outputs exist from the runs above); evaluate, promote
    and materialize run.
    """
    (world / "models" / "champion.json").unlink()
    env = _env(world, FEEDRANK_TRAINING__PROMOTE_MIN_AUC="0.99")
    run = run_dag_test(
        world,
        RETRAIN,
        LOGICAL_DATE,
        conf=CONF,
        env=env,
        fast_retries=True,
        mark_success="wait_for_landed_data|validate|features|validate_features|training_data|train"
        "|monitor",
    )
    print(f"third dag.test() (gate refuses, data steps marked success): {run.wall_s:.1f} s")
    return run


def test_gate_refusal_skips_promotion_without_failing_evaluation(
    world: Path, refused_run: DagTestRun
) -> None:
    run = refused_run
    assert run.state == "success", run.log[-4000:]
    assert run.tasks["evaluate"]["state"] == "success"
    assert run.tasks["promote"] == {"state": "skipped", "try_number": 1}
    assert run.tasks["materialize"]["state"] == "success"
    assert not (world / "models" / "champion.json").exists()
    (version,) = sorted(p.name for p in (world / "models").iterdir() if p.is_dir())
    report = world / "reports" / version
    assert (report / "metrics.json").is_file()
    decision = json.loads((report / "promotion.json").read_text())
    assert decision["promoted"] is False
    assert any("AUC" in failure for failure in decision["failures"]), decision["failures"]
    assert f"promotion of {version} refused" in run.log
