"""Training/serving skew: served vectors against the offline recomputation of the same rows."""

from __future__ import annotations

import pytest
import synthetic_lake
from monitor_names import DAY, MonitorWorld

from feedrank.feature_spec import model_features
from jobs import spark_io
from jobs.monitor_skew import (
    REQUEST_FEATURES,
    compare_served,
    offline_features,
    served_with_features,
)
from jobs.training_data import MODEL_VIEWS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _served(spark, rows: list[dict], folder):
    """Served impressions written and read back as a lake table (the landed form)."""
    synthetic_lake.write_lake_rows(folder, "impressions", rows)
    return served_with_features(spark_io.read_lake(spark, folder, "impressions", None, None))


@pytest.fixture(scope="module")
def skew_inputs(spark, monitor_world: MonitorWorld, tmp_path_factory):
    """The served rows, and their offline recomputation (computed once, cached).

    The first user's feed requests are left out, as if they had not landed: those rows'
    device is unknown.
    """
    cfg = monitor_world.settings
    served = _served(spark, monitor_world.served, tmp_path_factory.mktemp("served"))
    first_user = monitor_world.served[0]["user_id"]
    feeds = spark_io.read_lake(spark, cfg.paths.lake, "feed_requests", None, DAY).where(
        f"user_id != {first_user}"
    )
    views = {v: spark_io.read_view(spark, cfg.paths.features, v, None, DAY) for v in MODEL_VIEWS}
    offline = offline_features(served, feeds, views).cache()
    unknown = sum(r["user_id"] == first_user for r in monitor_world.served)
    return served, offline, unknown


def test_identical_served_and_offline_values_give_no_breach(monitor_world, skew_inputs):
    served, offline, unknown_device = skew_inputs
    report = compare_served(served, offline, mismatch_alert=0.01)

    rows = len(monitor_world.served)
    assert report["rows"] == rows > 20
    assert report["status"] == "ok" and report["breaches"] == []
    assert set(report["mismatch_rate"].values()) == {0.0}
    assert report["overall_mismatch_share"] == 0.0
    # Every feature is compared on every row, except context where the request is unknown.
    assert 0 < unknown_device < rows
    assert {n: report["compared"][n] for n in REQUEST_FEATURES} == dict.fromkeys(
        REQUEST_FEATURES, rows - unknown_device
    )
    assert {
        n: c for n, c in report["compared"].items() if n not in REQUEST_FEATURES
    } == dict.fromkeys([n for n in model_features() if n not in REQUEST_FEATURES], rows)
    # The world really carries values (not only agreeing nulls).
    served_values = [v for r in monitor_world.served for v in r["features"] if v is not None]
    assert len(served_values) > rows * len(model_features()) // 2


def test_a_feature_served_differently_is_caught_and_named(
    spark, monitor_world, skew_inputs, tmp_path
):
    _, offline, _ = skew_inputs
    names = model_features()
    length, created = names.index("tweet_length"), names.index("tweet_created_ts")
    rows = []
    for row in monitor_world.served:
        vector = list(row["features"])
        # The bug under test: serving reads the length one character longer.
        vector[length] = None if vector[length] is None else vector[length] + 1.0
        # Float32-sized rounding noise on a large value is within tolerance, not skew.
        vector[created] = None if vector[created] is None else vector[created] * (1 + 1e-8)
        rows.append({**row, "features": vector})
    report = compare_served(_served(spark, rows, tmp_path), offline, mismatch_alert=0.01)

    known = sum(r["features"][length] is not None for r in rows)
    assert known > len(rows) // 2
    assert report["breaches"] == ["tweet_length"]
    assert report["status"] == "breach"
    # Unknown tweets are missing on both sides and agree; every known length differs.
    assert report["mismatch_rate"]["tweet_length"] == known / len(rows)
    assert report["mismatch_rate"]["tweet_created_ts"] == 0.0
    example = report["examples"]["tweet_length"]
    assert example["served"] == example["offline"] + 1.0
    cells = sum(report["compared"].values())
    assert report["overall_mismatch_share"] == pytest.approx(known / cells)
    assert report["rows_with_mismatch_share"] == known / len(rows)
