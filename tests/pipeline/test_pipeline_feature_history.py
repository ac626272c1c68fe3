"""A feature run that starts from a history summary reads only the lake after it and writes
the same rows as the features built from the whole lake; a rerun keeps the partitions whose
lake days did not change (jobs/feature_history.py)."""

from __future__ import annotations

import datetime as dt
import os
import shutil

import pytest
import synthetic_lake
from pipeline_helpers import settings_at

from feedrank import lake
from feedrank.config import Settings
from jobs import feature_history, features, spark_io

# Over a minute each on 2 cores (201 s at load 2.6): `make test-long`, not `make test`.
pytestmark = pytest.mark.long

LAKE_START = dt.date(2026, 9, 1)
LAKE_DAYS = 36
FIRST_RUN = LAKE_START + dt.timedelta(days=31)  # its cut: LAKE_START + 1
SECOND_RUN = FIRST_RUN + dt.timedelta(days=2)  # cut LAKE_START + 3: carries the first's


@pytest.fixture(scope="module")
def first_run(spark, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A 36-day tiny world and a one-view feature run late in it, which saves a summary."""
    cfg = settings_at(settings, tmp_path_factory.mktemp("history"))
    world = synthetic_lake.generate_world(
        LAKE_START, LAKE_DAYS, users=10, seed=5, requests_per_user_day=1.5, candidates=6
    )
    synthetic_lake.write_world(cfg.paths.lake, world)
    features.run_features(spark, cfg, FIRST_RUN, FIRST_RUN, views=["tweet_authors"])
    return cfg


def carried_summary(cfg: Settings, start: dt.date) -> dt.date | None:
    """The summary a run starting on ``start`` would carry."""
    return feature_history.plan_history(
        cfg.paths.lake,
        cfg.paths.feature_history,
        features.FEATURE_INPUT_COLUMNS,
        start,
        features.LOOKBACK_DAYS,
    ).carried


def test_run_from_a_summary_writes_what_the_whole_lake_gives(spark, first_run: Settings) -> None:
    cfg = first_run
    lake_root, feat_root, history = cfg.paths.lake, cfg.paths.features, cfg.paths.feature_history
    first_cut = FIRST_RUN - dt.timedelta(days=features.LOOKBACK_DAYS + 1)
    assert feature_history.summary_dir(history, first_cut).is_dir()
    plan = feature_history.plan_history(
        lake_root, history, features.FEATURE_INPUT_COLUMNS, SECOND_RUN, features.LOOKBACK_DAYS
    )
    assert plan.carried == first_cut
    assert plan.read_from == first_cut + dt.timedelta(days=1)

    end = SECOND_RUN + dt.timedelta(days=1)
    features.run_features(spark, cfg, SECOND_RUN, end)
    summary = feature_history.summary_dir(history, plan.cut)
    assert spark.read.parquet(str(summary / "user_author")).count() > 0

    whole_lake = {
        name: spark_io.read_lake(spark, lake_root, name, None, end).select(*columns)
        for name, columns in features.FEATURE_INPUT_COLUMNS.items()
    }
    expected = features.build_features(spark, whole_lake, SECOND_RUN, end)
    for name, frame in expected.items():
        want = frame.drop("date")
        got = spark_io.read_view(spark, feat_root, name, SECOND_RUN, end)
        assert want.count() > 0, name
        assert got.exceptAll(want).count() == 0, name
        assert want.exceptAll(got).count() == 0, name

    # A rerun keeps every partition whose lake days did not change; a changed day is redone.
    def digests(day: dt.date) -> dict[str, str]:
        return {
            v: feature_history.folder_digest(lake.partition_dir(feat_root, v, day))
            for v in expected
        }

    kept, redone = digests(SECOND_RUN), digests(end)
    written = [v for v in expected if lake.partition_dir(feat_root, v, end).is_dir()]
    assert len(written) >= 7
    rows = {v: lake.content_hash(lake.partition_dir(feat_root, v, end)) for v in written}
    features.run_features(spark, cfg, SECOND_RUN, end, reuse=True)
    assert (digests(SECOND_RUN), digests(end)) == (kept, redone)
    touched = lake.partition_dir(lake_root, "impressions", end) / "part-00000.parquet"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    features.run_features(spark, cfg, SECOND_RUN, end, reuse=True)
    assert digests(SECOND_RUN) == kept
    assert all(digests(end)[v] != redone[v] for v in written)
    assert {v: lake.content_hash(lake.partition_dir(feat_root, v, end)) for v in written} == rows


@pytest.mark.parametrize("change", ["rewritten", "added"])
def test_summary_is_not_used_once_the_lake_before_its_cut_changes(
    first_run: Settings, tmp_path, change: str
) -> None:
    cfg = settings_at(first_run, tmp_path)
    shutil.copytree(first_run.paths.lake, cfg.paths.lake)
    shutil.copytree(first_run.paths.feature_history, cfg.paths.feature_history)
    assert carried_summary(cfg, SECOND_RUN) is not None
    part = lake.partition_dir(cfg.paths.lake, "impressions", LAKE_START) / "part-00000.parquet"
    if change == "rewritten":
        stat = part.stat()
        os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    else:
        older = lake.partition_dir(cfg.paths.lake, "impressions", LAKE_START - dt.timedelta(days=1))
        older.mkdir(parents=True)
        shutil.copy2(part, older / part.name)
    assert carried_summary(cfg, SECOND_RUN) is None
