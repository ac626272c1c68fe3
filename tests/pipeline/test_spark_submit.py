"""A batch job under ``spark-submit`` on the standalone cluster equals the in-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import END, START, PipelineRun, read_rows

from feedrank import services

pytestmark = pytest.mark.integration

ENTRY = Path(__file__).resolve().parents[2] / "jobs" / "spark_entry.py"


def _spark_properties(event_log_dir: Path) -> dict[str, str]:
    """The Spark properties an application's event log recorded at start.

    Spark 4 writes a rolling log by default: ``eventlog_v2_<app>/events_<n>_<app>``.
    """
    (log_file,) = sorted(event_log_dir.rglob("events_1_*"))
    for line in log_file.read_text().splitlines():
        event = json.loads(line)
        if event["Event"] == "SparkListenerEnvironmentUpdate":
            return dict(event["Spark Properties"])
    raise AssertionError(f"no environment update in {log_file}")


@pytest.mark.timeout(900)
def test_training_data_under_spark_submit_on_the_cluster_equals_the_in_process_run(
    pipeline_run: PipelineRun,
) -> None:
    cfg = pipeline_run.settings
    started = services.spark_cluster_up(cfg)
    try:
        master = services.spark_master_url(cfg)
        env = {
            **os.environ,
            "FEEDRANK_PATHS__HOME": str(cfg.paths.home),
            "FEEDRANK_SPARK__EVENT_LOG": "true",  # what the cluster profile sets
            "PYSPARK_PYTHON": sys.executable,
        }
        spark_submit = str(Path(sys.executable).parent / "spark-submit")
        done = subprocess.run(
            [spark_submit, "--master", master, "--driver-memory", "1g",
             "--name", "submitted-training-data",
             "--conf", "spark.eventLog.compress=false",  # readable here; zstd by default
             str(ENTRY),
             "training-data", "--start", START.isoformat(), "--end", END.isoformat(),
             "--run-id", "submitted"],
            capture_output=True, text=True, env=env, timeout=850, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        if started:
            services.spark_cluster_down(cfg)

    # The submitter's master, memory and name won; the profile filled in the rest.
    props = _spark_properties(cfg.paths.home / "spark-events")
    assert props["spark.master"] == master
    assert props["spark.driver.memory"] == "1g" != cfg.spark.driver_memory
    assert props["spark.app.name"] == "submitted-training-data"
    assert props["spark.eventLog.compress"] == "false"
    assert props["spark.sql.session.timeZone"] == "UTC"

    def key(row: dict) -> tuple:
        return (row["request_id"], row["tweet_id"])

    for split in ("train", "validation"):
        submitted = sorted(read_rows(cfg.paths.training / "submitted" / split), key=key)
        in_process = sorted(read_rows(pipeline_run.run_dir / split), key=key)
        assert submitted, split
        assert submitted == in_process, split


def test_the_entry_point_refuses_a_job_that_is_not_a_spark_job() -> None:
    done = subprocess.run(
        [sys.executable, str(ENTRY), "serve"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "expected a Spark job" in done.stderr and "'serve'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
