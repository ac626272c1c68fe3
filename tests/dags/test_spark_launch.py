"""The DAG tasks launch Spark jobs through spark-submit when the profile says so."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import feedrank_tasks as ft  # dags/ is on sys.path (tests/dags/conftest.py)
import pytest

from feedrank.config import get_settings
from jobs.spark_entry import ENTRY

K8S = ["--master", "k8s://https://kubernetes.default.svc", "--deploy-mode", "cluster"]


@pytest.mark.unit
def test_a_spark_job_goes_through_spark_submit_only_when_submit_args_are_set() -> None:
    job = ("training-data", "--start", "2026-11-01", "--end", "2026-11-03")
    argv = ft.feedrank_argv(job, K8S)
    assert Path(argv[0]).name == "spark-submit"
    assert argv[1:] == [*K8S, str(ENTRY), *job]
    # Not a Spark job, or no submit arguments: the local CLI.
    assert Path(ft.feedrank_argv(("promote", "--version", "v1"), K8S)[0]).name == "feedrank"
    assert Path(ft.feedrank_argv(job, None)[0]).name == "feedrank"


def test_run_feedrank_runs_a_spark_job_under_spark_submit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real spark-submit (local master) runs the entry point; `--help` starts no session."""
    monkeypatch.setenv("FEEDRANK_SPARK__SUBMIT_ARGS", json.dumps(["--master", "local[1]"]))
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    get_settings.cache_clear()
    try:
        with caplog.at_level("INFO", logger="feedrank.dags"):
            out = ft.run_feedrank("land", "--help")
    finally:
        get_settings.cache_clear()
    assert "Kafka topics" in out or "land" in out
    assert any("spark-submit --master 'local[1]'" in r.getMessage() for r in caplog.records)
