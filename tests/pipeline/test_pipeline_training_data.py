"""Training data: Spark equals the plain-Python reference, no leaks, labels and manifest."""

from __future__ import annotations

import datetime as dt
import json
import math

import pyarrow.parquet as pq
import pytest
from leak_checks import check_no_leaks, find_leaks
from pipeline_helpers import EDGE_SERVED_AT, END, START, read_rows
from reference_joins import reference_training_examples

from feedrank.config import HEADS
from feedrank.errors import FeedrankError
from feedrank.feature_spec import KEEP_PROB_COLUMN, VIEWS, training_columns
from jobs import spark_io
from jobs.training_data import (
    JOIN_ORDER,
    asof_join,
    broadcastable,
    device_codes,
    join_features,
    source_ts_column,
)

# Spark on a shared 2-core machine: the session-wide pipeline build needs headroom.
pytestmark = pytest.mark.timeout(900)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


@pytest.fixture(scope="module")
def reference(pipeline_run) -> dict[tuple, dict]:
    cfg = pipeline_run.settings
    td = cfg.training_data
    # The reference reads the same files the Spark job read, as plain dicts.
    views = {name: read_rows(cfg.paths.features / name) for name in JOIN_ORDER}
    rows = reference_training_examples(
        read_rows(cfg.paths.lake / "impressions"),
        read_rows(cfg.paths.lake / "engagements"),
        read_rows(cfg.paths.lake / "feed_requests"),
        views,
        td.attribution_window_s,
        td.negative_keep_rate,
        END - dt.timedelta(days=td.validation_days - 1),
    )
    return {(r["request_id"], r["tweet_id"]): r for r in rows}


@pytest.mark.integration
def test_spark_training_examples_equal_the_python_reference_exactly(pipeline_run, reference):
    spark_rows = {}
    for split in ("train", "validation"):
        for row in read_rows(pipeline_run.run_dir / split):
            row["split"] = split
            spark_rows[(row["request_id"], row["tweet_id"])] = row
    assert len(reference) > 50
    assert spark_rows.keys() == reference.keys()
    mismatches = [
        (key, col, spark_rows[key][col], ref[col])
        for key, ref in reference.items()
        for col in [*training_columns(), "split"]
        if not _same(spark_rows[key][col], ref[col])
    ]
    assert mismatches == []
    # The audit carries the same source timestamps as the reference join used.
    audit = {(r["request_id"], r["tweet_id"]): r for r in read_rows(pipeline_run.run_dir / "audit")}
    assert all(
        audit[k][source_ts_column(v)] == ref[source_ts_column(v)]
        for k, ref in reference.items()
        for v in JOIN_ORDER
    )
    # The data exercises every view (not a comparison of all-null columns).
    for view in JOIN_ORDER:
        assert any(ref[source_ts_column(view)] is not None for ref in reference.values()), view


@pytest.mark.integration
def test_output_layout_columns_and_manifest(pipeline_run):
    run = pipeline_run.run_dir
    for split in ("train", "validation"):
        assert pq.read_schema(next((run / split).glob("*.parquet"))).names == training_columns()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["train_dates"] == ["2026-11-01", "2026-11-02"]
    assert manifest["validation_dates"] == ["2026-11-03"]
    rows = {s: len(read_rows(run / s)) for s in ("train", "validation")}
    assert manifest["rows"] == rows
    train = read_rows(run / "train")
    assert manifest["positives"]["train"] == {h: sum(r[f"label_{h}"] for r in train) for h in HEADS}
    assert all(r["served_at"].date() < dt.date(2026, 11, 3) for r in train)
    # Effective keep-rate per head: between the configured rate and 1, for recalibration.
    w = pipeline_run.settings.training_data.negative_keep_rate
    assert manifest["negative_keep_rate"] == w
    assert all(w <= manifest["keep_rates"][h] < 1 for h in HEADS)
    assert {r[KEEP_PROB_COLUMN] for r in train} == {1.0, w}
    assert all(r[KEEP_PROB_COLUMN] == 1.0 for r in train if any(r[f"label_{h}"] for h in HEADS))


@pytest.mark.integration
def test_attribution_window_and_snapshot_boundaries(pipeline_run, reference):
    edge = [r for r in reference.values() if r["request_id"] == "edge-midnight"]
    engaged = next(r for r in edge if r["label_like"] == 1)
    # The like exactly one window after served_at counts; the reply 1 µs later does not.
    assert engaged["label_reply"] == 0
    # Requested 100 ms before 2026-11-02 00:00 and served exactly then: features are read
    # when the request arrives, so the 11-01 snapshot (event_timestamp == served_at) is not
    # visible yet: the one before it (stamped 11-01 00:00), if the entity has one, is what the
    # online store would have served.
    for view in ("user_engagement_daily", "tweet_stats_daily"):
        assert engaged[source_ts_column(view)] in (None, EDGE_SERVED_AT - dt.timedelta(days=1))
    # A snapshot stamped exactly at the request moment would be visible (the bound is
    # inclusive): the as-of join test below checks that on its own.


@pytest.mark.integration
def test_no_training_row_sees_data_from_its_future(spark, pipeline_run):
    audit = spark.read.parquet(str(pipeline_run.run_dir / "audit"))
    check_no_leaks(audit)
    assert find_leaks(audit).count() == 0


@pytest.mark.integration
def test_leak_check_catches_a_same_day_snapshot_join(spark, pipeline_run):
    """The classic bug: joining the snapshot of the impression's own day (it saw that day)."""
    from pyspark.sql import functions as F

    cfg = pipeline_run.settings
    audit = spark.read.parquet(str(pipeline_run.run_dir / "audit"))
    imps = spark_io.read_lake(spark, cfg.paths.lake, "impressions", START, END).select(
        "request_id", "tweet_id", "user_id"
    )
    daily = spark.read.parquet(str(cfg.paths.features / "user_engagement_daily"))
    src = source_ts_column("user_engagement_daily")
    same_day = daily.select(
        F.col("user_id").alias("snap_user"),
        F.col("date").alias("snap_day"),
        F.col("event_timestamp").alias(src),
    )
    leaky = (
        audit.drop(src)
        .join(imps, ["request_id", "tweet_id"])
        .join(
            same_day,
            (F.col("user_id") == F.col("snap_user"))
            & (F.col("snap_day") == F.to_date("served_at")),
        )
    )
    assert leaky.count() > 0
    leaks = find_leaks(leaky)
    assert leaks.count() == leaky.count()
    assert {r["view"] for r in leaks.select("view").distinct().collect()} == {
        "user_engagement_daily"
    }
    with pytest.raises(FeedrankError, match="feature leak"):
        check_no_leaks(leaky)


@pytest.mark.integration
@pytest.mark.parametrize("broadcast", [False, True], ids=["sort", "broadcast"])
def test_asof_join_ttl_ties_and_missing_keys(spark, broadcast):
    """Feast's rule on hand-made rows: latest event <= t, ties by created, within the TTL;
    the same rows from the sort-merge plan and from the broadcast plan."""
    view = VIEWS["user_realtime"]  # ttl 1 day
    t = dt.datetime(2026, 11, 5, 12, tzinfo=dt.UTC)
    h = dt.timedelta(hours=1)
    feats = spark.createDataFrame(
        [
            (1, t - 2 * h, t - 2 * h, 10),
            (1, t - h, t - h, 11),
            (1, t - h, t - h / 2, 12),
            (1, t + h, t + h, 99),  # future row: never used at t
            (2, t - 25 * h, t - 25 * h, 20),  # older than the TTL
            (3, t, t, 30),
        ],  # exactly at t: used
        "user_id long, event_timestamp timestamp, created_timestamp timestamp, "
        "user_engagements_1h long",
    )
    left = spark.createDataFrame(
        [(1, t), (2, t), (3, t), (4, t), (1, t - 3 * h)], "user_id long, served_at timestamp"
    )
    # Collected timestamps are naive (driver-local time; the machines run in UTC).
    t = t.replace(tzinfo=None)
    joined = asof_join(
        left,
        feats,
        view,
        id_columns=("user_id", "served_at"),
        broadcast=broadcast,
    )
    plan = joined._jdf.queryExecution().executedPlan().toString()
    assert ("BroadcastHashJoin" in plan) == broadcast
    got = {(r["user_id"], r["served_at"]): r["user_engagements_1h"] for r in joined.collect()}
    assert got == {(1, t): 12, (2, t): None, (3, t): 30, (4, t): None, (1, t - 3 * h): None}


@pytest.mark.integration
def test_long_histories_take_the_sort_plan(spark, tmp_path):
    """A view under the row limit whose keys have more rows each than the history limit is
    sorted, not broadcast (the broadcast plan tests a point against every row of its key);
    decided alike for a frame Spark counts and a Parquet table measured from its files."""
    view = VIEWS["user_realtime"]
    t = dt.datetime(2026, 11, 5, 12, tzinfo=dt.UTC)
    feats = spark.createDataFrame(
        [(1, t - dt.timedelta(minutes=m), t - dt.timedelta(minutes=m), m) for m in range(5)],
        "user_id long, event_timestamp timestamp, created_timestamp timestamp, "
        "user_engagements_1h long",
    )
    left = spark.createDataFrame([(1, t)], "user_id long, served_at timestamp")
    for max_history, sorted_plan in ((4, True), (5, False)):
        broadcast = broadcastable(feats, view, 1000, max_history)
        assert broadcast != sorted_plan
        joined = asof_join(
            left, feats, view, id_columns=("user_id", "served_at"), broadcast=broadcast
        )
        plan = joined._jdf.queryExecution().executedPlan().toString()
        assert ("BroadcastHashJoin" not in plan) == sorted_plan
        assert [r["user_engagements_1h"] for r in joined.collect()] == [0]
    # Two files of one key: 3 + 2 rows, 1 distinct key in all.
    feats.limit(3).write.parquet(str(tmp_path / "a"))
    feats.subtract(feats.limit(3)).write.parquet(str(tmp_path / "b"))
    stored = spark.read.parquet(str(tmp_path / "a"), str(tmp_path / "b"))
    assert len(stored.inputFiles()) >= 2
    for frame in (feats, stored):
        assert broadcastable(frame, view, 1000, 5), "5 rows of one key: within 5 per key"
        assert not broadcastable(frame, view, 1000, 4), "5 rows of one key: above 4 per key"
        assert not broadcastable(frame, view, 4, 5), "more rows than the row limit"
        assert not broadcastable(frame, view, 0, 5), "0 turns the broadcast plan off"


@pytest.mark.integration
def test_sort_and_broadcast_plans_join_the_same_features(spark, pipeline_run):
    """Every model view (topic key included) joined to the world's impressions by the sort
    plan (with and without dropping the feature rows of keys no impression holds) and by the
    broadcast plan: the same value in every cell."""
    cfg = pipeline_run.settings
    impressions = spark_io.read_lake(spark, cfg.paths.lake, "impressions", START, END)
    requests = spark_io.read_lake(spark, cfg.paths.lake, "feed_requests", None, None)
    examples = impressions.join(device_codes(requests), "request_id", "left")
    views = {v: spark_io.read_view(spark, cfg.paths.features, v, None, None) for v in JOIN_ORDER}
    by_plan = {}
    # sorted; sorted with the key filter; every view by broadcast (long histories included)
    plans = {"sorted": (0, 0), "filtered": (0, 10**9), "broadcast": (10**9, 0)}
    for name, (max_rows, max_keys) in plans.items():
        joined = join_features(
            examples,
            views,
            broadcast_max_rows=max_rows,
            broadcast_max_history=max_rows,
            key_filter_max_keys=max_keys,
        )
        executed = joined._jdf.queryExecution().executedPlan().toString()
        assert ("LeftSemi" in executed) == (name == "filtered")
        rows = joined.collect()
        by_plan[name] = {(r["request_id"], r["tweet_id"]): r.asDict() for r in rows}
    assert len(by_plan["sorted"]) == impressions.count() > 1000
    for name in ("filtered", "broadcast"):
        assert by_plan["sorted"].keys() == by_plan[name].keys()
        for key, row in by_plan["sorted"].items():
            other = by_plan[name][key]
            assert row.keys() == other.keys()
            assert all(_same(row[c], other[c]) for c in row), (name, key)
