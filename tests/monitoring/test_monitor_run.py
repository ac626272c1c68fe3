"""The shell: ``run_monitor`` over a lake date writes the report; the CLI fails on a breach."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from monitor_names import DAY, MonitorWorld

from feedrank.errors import FeedrankError
from feedrank.exporter import read_outcomes
from jobs.monitor import CHECKS, report_path, run_monitor
from jobs.monitor_cli import print_summary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_run_monitor_reports_every_check_of_a_lake_date(
    spark, served_lake: MonitorWorld, monitor_model: str, tmp_path
):
    cfg = served_lake.settings
    extra = tmp_path / "copy.json"

    report, path = run_monitor(spark, cfg, DAY, json_path=extra)

    assert path == report_path(cfg, DAY) and path.is_file()
    assert json.loads(path.read_text()) == json.loads(extra.read_text())
    assert report["date"] == DAY.isoformat()
    assert report["skew"]["status"] == "ok"
    assert report["skew"]["rows"] == len(served_lake.served)
    # Every request landed, so the device feature is compared everywhere too.
    assert set(report["skew"]["compared"].values()) == {len(served_lake.served)}
    # The model's metadata names no existing training run: drift says so instead of failing.
    assert report["drift"]["status"].startswith("skipped: no training run")
    # Impressions whose attribution window closed within the landed engagements are judged;
    # the rest wait for their labels, counted, never judged as negatives.
    auc = report["auc"]
    assert auc["rows"] + auc["pending_labels"] == len(served_lake.served)
    assert auc["rows"] > auc["pending_labels"]
    horizon = dt.datetime.fromisoformat(auc["labels_known_until"])
    window = dt.timedelta(seconds=cfg.training_data.attribution_window_s)
    final = [i for i in served_lake.served if i["served_at"] + window <= horizon]
    assert auc["rows"] == len(final)
    assert set(report["auc"]["versions"]) == {monitor_model}
    assert report["ok"] == (not report["breaches"])
    for line in report["breaches"]:
        assert line.split(" ", 1)[0] in CHECKS
    print_summary(report, path)  # renders without error
    # The outcome Prometheus scrapes (feedrank batch-metrics): breaches per check.
    recorded = {
        labels["check"]: value
        for labels, value in read_outcomes(cfg)["feedrank_batch_monitor_breaches"]["samples"]
    }
    assert recorded == {check: len(report[check]["breaches"]) for check in ("skew", "drift", "auc")}


def test_monitor_command_exits_with_one_line_on_a_bad_date():
    from jobs.monitor_cli import monitor_command

    with pytest.raises(FeedrankError, match="--date"):
        monitor_command(date="2026-13-01")


@pytest.mark.unit
def test_a_day_without_served_feature_vectors_is_reported_without_starting_spark(tmp_path):
    """A backfilled day (impressions, none with a logged feature vector): every check says so
    and no SparkSession is started; served vectors are counted per version, most first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from feedrank import lake
    from feedrank.config import PathsConfig, get_settings
    from jobs.monitor import served_versions

    cfg = get_settings().model_copy(update={"paths": PathsConfig(home=tmp_path)})
    schema = lake.table_schema("impressions")
    folder = lake.partition_dir(cfg.paths.lake, "impressions", DAY)
    folder.mkdir(parents=True)
    pq.write_table(schema.empty_table(), folder / "part-00000.parquet")

    def no_spark():
        raise AssertionError("a day with nothing to check must not start Spark")

    report, path = run_monitor(no_spark, cfg, DAY)

    empty = "skipped: no served impressions with logged features"
    assert [report[check]["status"] for check in CHECKS] == [empty] * len(CHECKS)
    assert report["ok"] and path.is_file()

    versions = pa.array(["v1", "v2", "v2", "v3"])
    vectors = pa.array([[0.5], [0.1], [0.2], None], type=schema.field("features").type)
    pq.write_table(
        pa.table({"model_version": versions, "features": vectors}), folder / "part-00001.parquet"
    )
    assert served_versions([folder]) == ["v2", "v1"]
