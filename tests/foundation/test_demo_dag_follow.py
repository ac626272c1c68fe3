"""The demo follows ``airflow dags test`` as it runs: task progress, retries, a gate's stop."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from feedrank.config import PathsConfig, Settings
from feedrank.demo import GateRefused, run_retrain_dag

pytestmark = pytest.mark.integration

PROBE_DAG = """
import datetime as dt
from pathlib import Path

from airflow.sdk import chain, dag, task
from airflow.sdk.exceptions import AirflowSkipException

MARKER = Path({marker!r})


@dag(
    dag_id="demo_follow_probe",
    schedule=None,
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    default_args={{"retries": 1, "retry_delay": dt.timedelta(seconds=2)}},
)
def demo_follow_probe():
    @task
    def train():
        return "v1"

    @task
    def evaluate():
        if not MARKER.exists():
            MARKER.write_text("tried")
            raise RuntimeError("first try lost its worker")

    @task
    def promote():
        raise AirflowSkipException(
            "promotion of v1 refused: reply calibration 1.274 outside 1±0.25; see promotion.json"
        )

    @task
    def materialize():
        MARKER.write_text("materialized")

    chain(train(), evaluate(), promote(), materialize())


demo_follow_probe()
"""


def test_demo_prints_tasks_and_retries_and_stops_at_the_gate(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    marker = tmp_path / "marker"
    (dags / "probe.py").write_text(PROBE_DAG.format(marker=str(marker)))
    home = settings.model_copy(update={"paths": PathsConfig(home=tmp_path / "home")})
    home.paths.logs.mkdir(parents=True)
    with pytest.raises(GateRefused) as refused:
        run_retrain_dag(home, dt.date(2026, 12, 7), "demo_follow_probe", dags)
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "promote skipped: promotion of v1 refused: reply calibration 1.274" in str(refused.value)
    assert "train: success" in out
    assert "evaluate: up_for_retry" in out and "RuntimeError: first try lost its worker" in out
    assert "evaluate: retry at " in out  # Airflow's own retry time, announced
    assert "evaluate: success" in out
    # The gate ended the run: what came after promote never ran.
    assert "materialize: started" not in out and marker.read_text() == "tried"
