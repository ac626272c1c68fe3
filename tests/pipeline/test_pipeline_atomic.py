"""Idempotent and atomic writes: reruns reproduce content; a crash mid-write changes nothing."""

from __future__ import annotations

import json

import pytest
from pipeline_helpers import END, FEATURE_START, START

from feedrank import lake
from jobs import features, spark_io, training_data

# Spark on a shared 2-core machine: the session-wide pipeline build needs headroom.
pytestmark = pytest.mark.timeout(900)


class WriterCrash(RuntimeError):
    pass


def _crash_after_writing(monkeypatch: pytest.MonkeyPatch, after: int = 1) -> None:
    """Let the real writer write ``after`` outputs, then die (as a killed job would)."""
    real = spark_io.write_spark_parquet
    calls = {"n": 0}

    def dying(df, path, partition_by=None):
        real(df, path, partition_by)
        calls["n"] += 1
        if calls["n"] >= after:
            raise WriterCrash(f"killed after writing {path}")

    monkeypatch.setattr(spark_io, "write_spark_parquet", dying)


def _snapshot(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.integration
def test_training_rerun_same_content_and_crash_keeps_previous(spark, pipeline_run, monkeypatch):
    cfg, run = pipeline_run.settings, pipeline_run.run_dir
    before = json.loads((run / "manifest.json").read_text())
    hashes = {s: lake.content_hash(run / s) for s in ("train", "validation")}
    assert hashes == before["content_sha256"]

    again = training_data.run_training_data(spark, cfg, START, END)
    assert again == run
    after = json.loads((run / "manifest.json").read_text())
    assert after == before
    assert {s: lake.content_hash(run / s) for s in ("train", "validation")} == hashes
    files_before = _snapshot(run)

    _crash_after_writing(monkeypatch)
    with pytest.raises(WriterCrash):
        training_data.run_training_data(spark, cfg, START, END)
    assert _snapshot(run) == files_before
    # No half-written sibling is left where readers look.
    assert [p.name for p in run.parent.iterdir()] == [run.name]


@pytest.mark.integration
def test_feature_rerun_same_content_and_crash_keeps_previous(spark, pipeline_run, monkeypatch):
    cfg = pipeline_run.settings
    views = ["tweet_attributes", "user_realtime"]
    folders = {v: cfg.paths.features / v for v in views}
    hashes = {v: lake.content_hash(f) for v, f in folders.items()}
    files = {v: _snapshot(f) for v, f in folders.items()}

    features.run_features(spark, cfg, FEATURE_START, END, views=views)
    assert {v: lake.content_hash(f) for v, f in folders.items()} == hashes
    # Stable part names: a rerun replaces files instead of adding new ones.
    assert {v: sorted(_snapshot(f)) for v, f in folders.items()} == {
        v: sorted(s) for v, s in files.items()
    }

    _crash_after_writing(monkeypatch)
    with pytest.raises(WriterCrash):
        features.run_features(spark, cfg, FEATURE_START, END, views=views)
    assert {v: _snapshot(f) for v, f in folders.items()} == files
    assert not [p for p in cfg.paths.features.iterdir() if p.name.startswith(".")]
