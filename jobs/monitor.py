"""Monitoring of the live model: training/serving skew, drift and daily AUC, from the lake.

Long because: the three checks (skew, drift, live AUC) share one reading of the day; splitting
them is open (issue 23).

Three checks over the impressions served on one date that carry the feature vector the
scorer used (``Impression.features``, ordered as :func:`feedrank.feature_spec.model_features`):

1. **Skew** (:func:`skew_report`) — the same features are recomputed offline for the same
   impression through the training-data job's own steps (:func:`jobs.training_data.join_features`
   as of :func:`jobs.training_data.request_time`, then :func:`jobs.training_data.add_context`),
   so "offline" means exactly what a training example of that impression would hold. Per
   feature: the share of impressions whose served and offline values differ
   (``|a − b| > 1e-6 · max(1, |a|, |b|)``, missing vs value counts as a mismatch, missing vs
   missing agrees).
   The device context (``ctx_device_code``) needs the feed request: it is joined by
   ``request_id`` from ``feed_requests``; impressions whose request is not in the lake (or a
   run without ``feed_requests``) are not compared on that one feature, and the report says
   how many were compared (and features are then read as of ``served_at``). Every other
   context feature depends only on the request time, the tweet and the user, so it is always
   compared.
2. **Drift** (:func:`drift_report`) — PSI per feature (:func:`jobs.validate.psi`, the
   validation gate's definition) between the training split the model learnt from and the
   served feature vectors. Training examples are negative-downsampled; :func:`training_sample`
   undoes that with the job's own deterministic keep-hash so both sides are uniform samples
   of impressions.
3. **AUC** (:func:`auc_report`) — labels from :func:`jobs.training_data.attribute_labels`
   (the pipeline's attribution window), predictions recomputed from the logged vectors with
   the served model version (:meth:`feedrank.model.LoadedModel.predict_heads`); ROC-AUC
   per head (:func:`feedrank.offline_metrics.head_metrics`). Only impressions whose attribution
   window closed within the landed engagements (:func:`label_horizon`) are judged: the retrain
   DAG monitors day ``D`` right after midnight, when engagements with the last hour's
   impressions are still landing, and a label still on its way is not a negative. The others
   are counted (``pending_labels``).

Thresholds come from ``settings.monitoring``. The pure functions return report dicts;
:func:`run_monitor` is the shell that reads the lake and writes
``<paths.reports>/monitoring/<date>.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from feedrank import lake, publish
from feedrank.config import HEADS, MonitoringConfig, Settings
from feedrank.errors import FeedrankError
from feedrank.exporter import record_outcome, record_time
from feedrank.feature_spec import CONTEXT_FEATURES, ID_COLUMNS, model_features
from feedrank.offline_metrics import head_metrics
from jobs import spark_io
from jobs.training_data import (
    ID_KEYS,
    MODEL_VIEWS,
    add_context,
    attribute_labels,
    device_codes,
    join_features,
    keep_hash,
)
from jobs.validate import PSI_BINS, PSI_MIN_ROWS, psi

log = logging.getLogger("feedrank.monitor")

SKEW_TOLERANCE = 1e-6  # absolute below 1, relative above: float32 round-trips stay equal
# Context is computed at the feed request's requested_at on its device: without the landed
# request these cannot be recomputed, so they are not compared (counted as such).
REQUEST_FEATURES: tuple[str, ...] = tuple(f.name for f in CONTEXT_FEATURES)
# Features that move with the calendar by construction (every served day is "new" next to
# the training days): their PSI is reported but never a breach.
DRIFT_EXEMPT: tuple[str, ...] = (
    "tweet_created_ts",
    "ctx_is_weekend",
    "ctx_days_to_holiday",
)
DRIFT_MAX_ROWS = 100_000  # per side; PSI on 10 bins is stable long before this
AUC_MAX_ROWS = 200_000  # labelled impressions brought to the driver for prediction
AUC_MIN_PER_CLASS = 10  # a head's AUC is judged only with this many positives and negatives
MAX_EXAMPLES = 5  # differing impressions quoted in the skew report (one query each)
CHECKS: tuple[str, ...] = ("skew", "drift", "auc")
# The label horizon when no engagement has landed: no label is final.
NO_LABELS_YET = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Predictor = Callable[[str, np.ndarray], Mapping[str, np.ndarray]]


def _missing(col: Column) -> Column:
    return col.isNull() | F.isnan(col)


def served_with_features(impressions: DataFrame) -> DataFrame:
    """Impressions carrying a feature vector of the contract's length, one per (request, tweet).

    Vectors of another length were logged under another contract; they are not comparable
    and are left out (:func:`skew_report` counts them).
    """
    n = len(model_features())
    return (
        impressions.where(F.col("features").isNotNull() & (F.size("features") == n))
        .dropDuplicates(list(ID_KEYS))
        .select(*ID_COLUMNS, "model_version", "features")
    )


def offline_features(
    served: DataFrame, feed_requests: DataFrame | None, views: Mapping[str, DataFrame]
) -> DataFrame:
    """The training-data job's features for each served impression, as of its request time.

    Args:
        served: impressions (``request_id``, ``user_id``, ``tweet_id``, ``author_id``,
            ``served_at``, ``position``), unique per (request_id, tweet_id).
        feed_requests: the lake's feed requests (for the device), or ``None``.
        views: feature table per model view (:data:`jobs.training_data.MODEL_VIEWS`).

    Returns:
        ``request_id``, ``tweet_id``, ``device_known`` (the request's device was found) and
        every model feature as double (null where missing).
    """
    points = served.select(*ID_COLUMNS)
    if feed_requests is not None:
        points = points.join(device_codes(feed_requests), "request_id", "left")
    else:
        points = points.withColumn("device_code", F.lit(None).cast("bigint"))
    # Every view's lookup reads the points: compute them once.
    joined = add_context(join_features(points.cache(), views))
    return joined.select(
        *ID_KEYS,
        F.col("device_code").isNotNull().alias("device_known"),
        *[F.col(n).cast("double").alias(n) for n in model_features()],
    )


def skew_report(
    impressions: DataFrame,
    feed_requests: DataFrame | None,
    views: Mapping[str, DataFrame],
    mismatch_alert: float,
    tolerance: float = SKEW_TOLERANCE,
) -> dict[str, Any]:
    """Per-feature mismatch rate between served vectors and the offline recomputation.

    Args:
        impressions: served impressions (rows without ``features`` are ignored).
        feed_requests: feed requests for the device context, or ``None`` (then
            ``ctx_device_code`` is not compared).
        views: feature table per model view.
        mismatch_alert: a feature whose mismatch rate exceeds this is a breach.
        tolerance: see :func:`compare_served`.

    Returns:
        :func:`compare_served`'s report.
    """
    served = served_with_features(impressions)
    offline = offline_features(served, feed_requests, views)
    report = compare_served(served, offline, mismatch_alert, tolerance)
    logged_rows = impressions.where(F.col("features").isNotNull()).count()
    # Logged under another contract (vector length) or duplicates of one impression.
    report["logged_rows"] = logged_rows
    report["rows_not_compared"] = logged_rows - report["rows"]
    return report


def compare_served(
    served: DataFrame,
    offline: DataFrame,
    mismatch_alert: float,
    tolerance: float = SKEW_TOLERANCE,
) -> dict[str, Any]:
    """Compare served vectors with their offline values, feature by feature.

    Args:
        served: :func:`served_with_features` rows.
        offline: :func:`offline_features` of the same rows.
        mismatch_alert: a feature whose mismatch rate exceeds this is a breach.
        tolerance: values differ when ``|a − b| > tolerance · max(1, |a|, |b|)``; missing
            vs a value differs, missing vs missing agrees.

    Returns:
        ``rows`` compared, ``mismatch_rate`` and ``compared`` per feature (``compared`` is
        below ``rows`` only for the device feature of requests not found),
        ``overall_mismatch_share`` (mismatching cells / compared cells),
        ``rows_with_mismatch_share``, ``examples`` (one differing impression per breached
        feature), ``breaches`` (feature names, worst first) and ``status``.
    """
    names = model_features()
    pairs = served.select(*ID_KEYS, "features").join(offline, list(ID_KEYS), "inner")
    flags: list[Column] = []
    for i, name in enumerate(names):
        s, o = F.get(F.col("features"), i), F.col(name)
        differ = F.abs(s - o) > F.lit(tolerance) * F.greatest(F.lit(1.0), F.abs(s), F.abs(o))
        flag = (
            F.when(_missing(s) & _missing(o), 0)
            .when(_missing(s) | _missing(o), 1)
            .when(differ, 1)
            .otherwise(0)
        )
        if name in REQUEST_FEATURES:
            flag = F.when(F.col("device_known"), flag)  # null: not compared
        flags.append(flag.alias(f"_m{i}"))
    flagged = pairs.select(*ID_KEYS, "features", *names, *flags).cache()
    any_flag = F.greatest(*[F.coalesce(F.col(f"_m{i}"), F.lit(0)) for i in range(len(names))])
    aggs = [F.count(F.lit(1)).alias("rows"), F.sum(any_flag).alias("rows_with_mismatch")]
    for i in range(len(names)):
        aggs += [F.sum(f"_m{i}").alias(f"n{i}"), F.count(f"_m{i}").alias(f"c{i}")]
    row = flagged.agg(*aggs).collect()[0]
    rows = int(row["rows"])
    report: dict[str, Any] = {
        "threshold": mismatch_alert,
        "tolerance": tolerance,
        "rows": rows,
        "request_features": list(REQUEST_FEATURES),
        "mismatch_rate": {},
        "compared": {},
        "examples": {},
        "breaches": [],
    }
    if rows == 0:
        flagged.unpersist()
        report["status"] = "skipped: no served impressions with logged features"
        return report
    cells = mismatched = 0
    for i, name in enumerate(names):
        compared, n_bad = int(row[f"c{i}"]), int(row[f"n{i}"] or 0)
        cells, mismatched = cells + compared, mismatched + n_bad
        report["compared"][name] = compared
        rate = n_bad / compared if compared else None
        report["mismatch_rate"][name] = rate
        if rate is not None and rate > mismatch_alert:
            report["breaches"].append(name)
    report["breaches"].sort(key=lambda n: (-report["mismatch_rate"][n], n))
    for name in report["breaches"][:MAX_EXAMPLES]:
        i = names.index(name)
        example = (
            flagged.where(F.col(f"_m{i}") == 1)
            .select("request_id", "tweet_id", F.get(F.col("features"), i).alias("s"), name)
            .orderBy(*ID_KEYS)
            .first()
        )
        report["examples"][name] = {
            "request_id": example["request_id"],
            "tweet_id": int(example["tweet_id"]),
            "served": example["s"],
            "offline": example[name],
        }
    flagged.unpersist()
    report["overall_mismatch_share"] = mismatched / cells if cells else None
    report["rows_with_mismatch_share"] = int(row["rows_with_mismatch"]) / rows
    report["status"] = "breach" if report["breaches"] else "ok"
    return report


def served_matrix(impressions: DataFrame, max_rows: int = DRIFT_MAX_ROWS) -> pd.DataFrame:
    """Served feature vectors as a pandas frame (one column per model feature, NaN = missing).

    More than ``max_rows`` impressions are thinned with the training job's keep-hash (a
    deterministic uniform sample).
    """
    served = served_with_features(impressions)
    n = served.count()
    if n > max_rows:
        served = served.where(keep_hash(F.col("request_id"), F.col("tweet_id")) < max_rows / n)
    names = model_features()
    frame = served.select(
        *[F.get(F.col("features"), i).alias(name) for i, name in enumerate(names)]
    ).toPandas()
    return frame.astype(np.float64)


def training_sample(
    spark: SparkSession, run_dir: Path, max_rows: int = DRIFT_MAX_ROWS
) -> pd.DataFrame:
    """A uniform sample of the impressions behind a training run's ``train`` split.

    The job kept an all-negative row when ``keep_hash < w`` and every positive row; keeping
    only rows with ``keep_hash < w`` (positives included) leaves a uniform ``w``-sample of all
    impressions, so its feature distribution is the impressions', not the downsampled one.
    """
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no training run at {run_dir} (manifest.json missing)")
    manifest = json.loads(manifest_path.read_text())
    rate = float(manifest["negative_keep_rate"])
    rows = int(manifest["rows"]["train"])
    names = model_features()
    train = spark.read.parquet(str(run_dir / "train"))
    # Expected rows after the uniform filter ~ rows · w / (share kept) ≤ rows; thin further.
    fraction = min(1.0, max_rows / rows) if rows else 1.0
    sample = train.where(keep_hash(F.col("request_id"), F.col("tweet_id")) < rate * fraction)
    return sample.select(*[F.col(n).cast("double") for n in names]).toPandas().astype(np.float64)


def drift_report(
    training: pd.DataFrame,
    served: pd.DataFrame,
    psi_alert: float,
    min_rows: int = PSI_MIN_ROWS,
    bins: int = PSI_BINS,
    exempt: tuple[str, ...] = DRIFT_EXEMPT,
) -> dict[str, Any]:
    """PSI per model feature of served vectors against the training data.

    Args:
        training: training feature values (one column per model feature).
        served: served feature values, same columns.
        psi_alert: PSI above this is a breach (features in ``exempt`` never are).
        min_rows: features with fewer non-missing values on either side are skipped.
        bins: quantile bins of the training distribution.
        exempt: calendar-bound features, reported only.

    Returns:
        ``psi`` per feature (None when skipped), ``null_share`` per side, ``skipped``
        reasons, ``breaches`` (worst first) and ``status``.
    """
    report: dict[str, Any] = {
        "threshold": psi_alert,
        "rows": {"training": len(training), "served": len(served)},
        "exempt": list(exempt),
        "psi": {},
        "null_share": {"training": {}, "served": {}},
        "skipped": {},
        "breaches": [],
    }
    if len(served) == 0 or len(training) == 0:
        side = "served" if len(served) == 0 else "training"
        report["status"] = f"skipped: no {side} rows"
        return report
    for name in model_features():
        train_values = training[name].to_numpy(np.float64)
        served_values = served[name].to_numpy(np.float64)
        report["null_share"]["training"][name] = float(np.isnan(train_values).mean())
        report["null_share"]["served"][name] = float(np.isnan(served_values).mean())
        train_values = train_values[~np.isnan(train_values)]
        served_values = served_values[~np.isnan(served_values)]
        if min(len(train_values), len(served_values)) < min_rows:
            report["psi"][name] = None
            report["skipped"][name] = (
                f"{len(train_values)} training / {len(served_values)} served values < {min_rows}"
            )
            continue
        value = psi(served_values, train_values, bins)
        report["psi"][name] = value
        if value > psi_alert and name not in exempt:
            report["breaches"].append(name)
    report["breaches"].sort(key=lambda n: (-report["psi"][n], n))
    report["status"] = "breach" if report["breaches"] else "ok"
    return report


def label_horizon(engagements: DataFrame) -> dt.datetime | None:
    """How far the landed engagements reach: the latest ``engaged_at`` (None: none landed).

    Landing publishes events in the order they happen, so an impression's labels are final
    only once engagements past its attribution window have landed; before that, a missing
    engagement may just not have landed yet.
    """
    latest = engagements.agg(F.max("engaged_at")).first()[0]
    # PySpark hands timestamps back naive, in the driver's local time.
    return latest.astimezone(dt.UTC) if latest is not None else None


def labels_final(served_at: Column, attribution_window_s: int, horizon: dt.datetime) -> Column:
    """True where the impression's attribution window closed before ``horizon``."""
    window = F.expr(f"INTERVAL {int(attribution_window_s)} SECONDS")
    return (served_at + window) <= F.lit(horizon)


def labelled_served(
    impressions: DataFrame,
    engagements: DataFrame,
    attribution_window_s: int,
    max_rows: int = AUC_MAX_ROWS,
    horizon: dt.datetime | None = None,
) -> pd.DataFrame:
    """Served impressions with logged features and their ``label_<head>`` (pipeline labelling).

    Args:
        impressions: landed impressions (those without a logged vector are left out).
        engagements: landed engagements.
        attribution_window_s: the pipeline's attribution window.
        max_rows: thin to about this many rows with the keep-hash.
        horizon: only impressions whose attribution window closed by then
            (:func:`labels_final`); the retrain DAG monitors a day right after it ends, when
            the last hour's engagements have not all landed, and a label that is still
            coming must not count as a negative. None: every impression.

    Returns:
        pandas frame: ``request_id``, ``tweet_id``, ``model_version``, ``features`` (list),
        one ``label_<head>`` per head.
    """
    served = served_with_features(impressions)
    if horizon is not None:
        served = served.where(labels_final(F.col("served_at"), attribution_window_s, horizon))
    n = served.count()
    if n > max_rows:
        served = served.where(keep_hash(F.col("request_id"), F.col("tweet_id")) < max_rows / n)
    labelled = attribute_labels(served, engagements, attribution_window_s)
    return labelled.select(
        *ID_KEYS, "model_version", "features", *[f"label_{h}" for h in HEADS]
    ).toPandas()


def feature_matrix(features: pd.Series) -> np.ndarray:
    """Logged vectors (lists with None for missing) as a float64 matrix with NaN."""
    width = len(model_features())
    if len(features) == 0:
        return np.empty((0, width))
    rows = [[np.nan if v is None else v for v in vector] for vector in features]
    return np.asarray(rows, dtype=np.float64)


def _auc_of(labels: Mapping[str, np.ndarray], preds: Mapping[str, np.ndarray]) -> dict:
    out = {}
    for head in HEADS:
        y = np.asarray(labels[head], dtype=np.float64)
        metrics = head_metrics(y, preds[head]) if len(y) else {}
        positives = int(y.sum())
        out[head] = {
            "rows": len(y),
            "positives": positives,
            "roc_auc": _finite(metrics.get("roc_auc")),
            "pr_auc": _finite(metrics.get("pr_auc")),
            "rce": _finite(metrics.get("rce")),
            "calibration": _finite(metrics.get("calibration")),
        }
    return out


def auc_report(
    labelled: pd.DataFrame,
    predict: Predictor,
    min_auc: float,
    min_per_class: int = AUC_MIN_PER_CLASS,
) -> dict[str, Any]:
    """ROC-AUC per head of the served model versions on their own logged feature vectors.

    Args:
        labelled: :func:`labelled_served` output.
        predict: ``(model_version, X) -> {head: probabilities}``; in production
            ``model_files.load_model(version).predict_heads``.
        min_auc: a head whose AUC over all served versions is below this is a breach.
        min_per_class: a head is judged only with at least this many positives and negatives.

    Returns:
        ``heads`` (pooled over versions) and ``versions`` (per version): rows, positives,
        roc_auc, pr_auc, rce, calibration per head; ``unavailable`` versions with why;
        ``breaches`` (heads) and ``status``.
    """
    report: dict[str, Any] = {
        "threshold": min_auc,
        "min_per_class": min_per_class,
        "rows": len(labelled),
        "versions": {},
        "unavailable": {},
        "heads": {},
        "breaches": [],
    }
    pooled_y: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
    pooled_p: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
    for version, group in labelled.groupby("model_version", sort=True):
        X = feature_matrix(group["features"])
        try:
            preds = predict(str(version), X)
        except FeedrankError as exc:
            report["unavailable"][str(version)] = str(exc)
            continue
        labels = {h: group[f"label_{h}"].to_numpy(np.float64) for h in HEADS}
        report["versions"][str(version)] = _auc_of(labels, preds)
        for h in HEADS:
            pooled_y[h].append(labels[h])
            pooled_p[h].append(np.asarray(preds[h], dtype=np.float64))
    if not report["versions"]:
        report["status"] = (
            "skipped: no served impressions with logged features"
            if not len(labelled)
            else "skipped: no served model version could be loaded"
        )
        return report
    report["heads"] = _auc_of(
        {h: np.concatenate(pooled_y[h]) for h in HEADS},
        {h: np.concatenate(pooled_p[h]) for h in HEADS},
    )
    for head, stats in report["heads"].items():
        negatives = stats["rows"] - stats["positives"]
        judged = min(stats["positives"], negatives) >= min_per_class
        stats["judged"] = judged
        if judged and stats["roc_auc"] is not None and stats["roc_auc"] < min_auc:
            report["breaches"].append(head)
    report["status"] = "breach" if report["breaches"] else "ok"
    return report


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


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


def run_monitor(
    spark: SparkSession,
    settings: Settings,
    day: dt.date,
    training_run: Path | None = None,
    json_path: Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Run every check on the impressions served on ``day`` and write the report.

    Args:
        spark: the session.
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
    read = spark_io.read_partitions
    impressions = read(spark, parts["impressions"], lake.table_schema("impressions"))
    impressions = impressions.where(F.col("features").isNotNull()).cache()
    engagements = read(spark, parts["engagements"], lake.table_schema("engagements"))
    feed_requests = read(spark, parts["feed_requests"], lake.table_schema("feed_requests"))
    mon = settings.monitoring
    versions = [
        r["model_version"]
        for r in impressions.groupBy("model_version").count().orderBy(F.desc("count")).collect()
    ]
    if not versions:
        empty = "skipped: no served impressions with logged features"
        skew = {"status": empty, "breaches": []}
        drift = {"status": empty, "breaches": []}
        auc = {"status": empty, "breaches": []}
    else:
        missing = [v for v in MODEL_VIEWS if not parts[v]]
        if missing:
            skew = {"status": f"skipped: no feature partitions for {missing[0]}", "breaches": []}
        else:
            views = {v: read(spark, parts[v], lake.feature_table_schema(v)) for v in MODEL_VIEWS}
            skew = skew_report(impressions, feed_requests, views, mon.skew_mismatch_alert)
        run_dir = training_run or default_training_run(settings, versions)
        if run_dir is None or not (Path(run_dir) / "manifest.json").is_file():
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
