"""A feature run that starts from a history summary reads only the lake after it and writes
the same rows as the features built from the whole lake (jobs/feature_history.py)."""

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
        cfg.paths.features,
        features.FEATURE_INPUT_COLUMNS,
        start,
        features.LOOKBACK_DAYS,
    ).carried


def test_run_from_a_summary_writes_what_the_whole_lake_gives(spark, first_run: Settings) -> None:
    cfg = first_run
    lake_root, feat_root = cfg.paths.lake, cfg.paths.features
    first_cut = FIRST_RUN - dt.timedelta(days=features.LOOKBACK_DAYS + 1)
    assert (feature_history.history_root(feat_root) / f"cut={first_cut}").is_dir()
    plan = feature_history.plan_history(
        lake_root, feat_root, features.FEATURE_INPUT_COLUMNS, SECOND_RUN, features.LOOKBACK_DAYS
    )
    assert plan.carried == first_cut
    assert plan.read_from == first_cut + dt.timedelta(days=1)

    end = SECOND_RUN + dt.timedelta(days=1)
    features.run_features(spark, cfg, SECOND_RUN, end)
    summary = feature_history.history_root(feat_root) / f"cut={plan.cut}"
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


@pytest.mark.parametrize("change", ["rewritten", "added"])
def test_summary_is_not_used_once_the_lake_before_its_cut_changes(
    first_run: Settings, tmp_path, change: str
) -> None:
    cfg = settings_at(first_run, tmp_path)
    shutil.copytree(first_run.paths.lake, cfg.paths.lake)
    shutil.copytree(first_run.paths.features, cfg.paths.features)
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
