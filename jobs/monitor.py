"""Monitoring of the live model from the lake: one report a day, three checks.

Over the impressions served on one date that carry the feature vector the scorer used
(``Impression.features``, ordered as :func:`feedrank.feature_spec.model_features`):

1. **Skew** (:mod:`jobs.monitor_skew`): served vectors against the training-data job's own
   recomputation of the same impressions, per feature.
2. **Drift** (:mod:`jobs.monitor_drift`): PSI per feature between the training split the model
   learnt from and the served vectors.
3. **AUC** (:mod:`jobs.monitor_auc`): ROC-AUC per head of the served versions on impressions
   whose labels are final.

Thresholds come from ``settings.monitoring``. The checks are pure functions returning report
dicts; :func:`run_monitor` here is the shell that reads the lake and writes
``<paths.reports>/monitoring/<date>.json``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from feedrank import feature_spec, lake, publish
from feedrank.config import MonitoringConfig, Settings
from feedrank.errors import FeedrankError
from feedrank.exporter import record_outcome, record_time
from jobs import spark_io
from jobs.monitor_auc import (
    NO_LABELS_YET,
    Predictor,
    auc_report,
    label_horizon,
    labelled_served,
    labels_final,
)
from jobs.monitor_drift import drift_report, served_matrix, training_sample
from jobs.monitor_skew import served_with_features, skew_report
from jobs.training_data import MODEL_VIEWS

log = logging.getLogger("feedrank.monitor")

CHECKS: tuple[str, ...] = ("skew", "drift", "auc")


def monitoring_report(
    day: dt.date, skew: Mapping, drift: Mapping, auc: Mapping, thresholds: MonitoringConfig
) -> dict[str, Any]:
    """The day's report: every check, ``ok`` and one ``breaches`` line per breached check."""
    checks = {"skew": dict(skew), "drift": dict(drift), "auc": dict(auc)}
    lines = [
        f"{name} ({', '.join(checks[name]['breaches'])})"
        for name in CHECKS
        if checks[name].get("breaches")
    ]
    return {
        "date": day.isoformat(),
        "ok": not lines,
        "breaches": lines,
        "thresholds": thresholds.model_dump(),
        **checks,
    }


def _input_partitions(settings: Settings, day: dt.date) -> dict[str, list[Path]]:
    from jobs import training_data

    window_days = -(-settings.training_data.attribution_window_s // 86400)
    return training_data._input_partitions(settings, day, day, window_days)


def default_training_run(settings: Settings, versions: list[str]) -> Path | None:
    """The training run recorded in the metadata of the first loadable served version."""
    from feedrank import model_files

    for version in versions:
        try:
            meta = model_files.read_metadata(model_files.resolve_model_dir(version, settings))
        except FeedrankError:
            continue
        run = (meta.get("training_data") or {}).get("run")
        if run:
            return Path(run)
    return None


def registry_predictor(settings: Settings) -> Predictor:
    """``predict`` for :func:`auc_report`: each version loaded (and verified) once."""
    from feedrank import model_files, tracking

    cache: dict[str, Any] = {}

    def predict(version: str, X: np.ndarray) -> Mapping[str, np.ndarray]:
        if version not in cache:
            folder = tracking.local_model_dir(settings, version)
            cache[version] = model_files.load_model(folder, settings)
        return cache[version].predict_heads(X)

    return predict


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` as JSON atomically (temp file, then rename)."""
    publish.write_json_atomic(path, dict(report))


def report_path(settings: Settings, day: dt.date) -> Path:
    """``<paths.reports>/monitoring/<date>.json``."""
    return settings.paths.reports / "monitoring" / f"{day.isoformat()}.json"


def served_versions(impression_partitions: list[Path]) -> list[str | None]:
    """Model versions of the impressions that carry their feature vector, most served first.

    Read with pyarrow from two columns, so a day with none of them (a fresh backfill of
    simulated days: the demo's and every first DAG run's) needs no SparkSession at all.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    counts: dict[str | None, int] = {}
    for folder in impression_partitions:
        for file in sorted(Path(folder).glob("*.parquet")):
            table = pq.read_table(file, columns=["model_version", "features"])
            served = table.filter(pc.is_valid(table["features"]))["model_version"]
            for row in pc.value_counts(served).to_pylist():
                counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    return sorted(counts, key=lambda version: (-counts[version], str(version)))


def run_monitor(
    spark: SparkSession | Callable[[], SparkSession],
    settings: Settings,
    day: dt.date,
    training_run: Path | None = None,
    json_path: Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Run every check on the impressions served on ``day`` and write the report.

    Args:
        spark: the session, or a function that starts it (called only when the day has
            served impressions with their feature vectors).
        settings: thresholds (``monitoring``), paths, attribution window.
        day: the served date.
        training_run: training run folder for drift; default: the one recorded in the
            served model version's metadata.
        json_path: an extra copy of the report.

    Returns:
        (report, path of ``<paths.reports>/monitoring/<date>.json``).
    """
    parts = _input_partitions(settings, day)
    if not parts["impressions"]:
        raise FileNotFoundError(f"no impressions partition for {day} under {settings.paths.lake}")
    mon = settings.monitoring
    versions = served_versions(parts["impressions"])
    if not versions:
        empty = "skipped: no served impressions with logged features"
        skew = {"status": empty, "breaches": []}
        drift = {"status": empty, "breaches": []}
        auc = {"status": empty, "breaches": []}
    else:
        spark = spark if isinstance(spark, SparkSession) else spark()
        read = spark_io.read_partitions
        impressions = read(spark, parts["impressions"], lake.table_schema("impressions"))
        impressions = impressions.where(F.col("features").isNotNull()).cache()
        engagements = read(spark, parts["engagements"], lake.table_schema("engagements"))
        feed_requests = read(spark, parts["feed_requests"], lake.table_schema("feed_requests"))
        missing = [v for v in MODEL_VIEWS if not parts[v]]
        if missing:
            skew = {"status": f"skipped: no feature partitions for {missing[0]}", "breaches": []}
        else:
            views = {v: read(spark, parts[v], lake.feature_table_schema(v)) for v in MODEL_VIEWS}
            skew = skew_report(impressions, feed_requests, views, mon.skew_mismatch_alert)
        run_dir = training_run or default_training_run(settings, versions)
        if run_dir is None or not (Path(run_dir) / feature_spec.TRAINING_MANIFEST).is_file():
            drift = {"status": f"skipped: no training run ({run_dir})", "breaches": []}
        else:
            drift = drift_report(
                training_sample(spark, Path(run_dir)), served_matrix(impressions), mon.psi_alert
            )
            drift["training_run"] = str(run_dir)
        window_s = settings.training_data.attribution_window_s
        horizon = label_horizon(engagements) or NO_LABELS_YET
        labelled = labelled_served(impressions, engagements, window_s, horizon=horizon)
        pending = (
            served_with_features(impressions)
            .where(~labels_final(F.col("served_at"), window_s, horizon))
            .count()
        )
        auc = auc_report(labelled, registry_predictor(settings), mon.min_auc)
        auc["labels_known_until"] = horizon.isoformat()
        auc["pending_labels"] = pending
        if pending and not len(labelled):
            auc["status"] = f"skipped: labels of {pending} impressions not final yet"
        impressions.unpersist()
    report = monitoring_report(day, skew, drift, auc, mon)
    path = report_path(settings, day)
    write_report(path, report)
    if json_path is not None:
        write_report(Path(json_path), report)
    log.info("monitoring %s -> %s (ok=%s)", day, path, report["ok"])
    for check, section in (("skew", skew), ("drift", drift), ("auc", auc)):
        record_outcome(
            settings,
            "feedrank_batch_monitor_breaches",
            "Breaches found by the last monitoring run, by check.",
            len(section.get("breaches", [])),
            {"check": check},
        )
    record_time(
        settings,
        "feedrank_batch_monitor_last_run_timestamp_seconds",
        "When monitoring last ran.",
    )
    return report, path
