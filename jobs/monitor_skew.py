"""Monitoring: training/serving skew of the served feature vectors.

**Skew** (:func:`skew_report`) — the same features are recomputed offline for the same
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

Part of the monitoring run (:mod:`jobs.monitor`); the threshold comes from ``settings.monitoring``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from feedrank.feature_spec import CONTEXT_FEATURES, ID_COLUMNS, model_features
from jobs.training_data import ID_KEYS, add_context, device_codes, join_features

SKEW_TOLERANCE = 1e-6  # absolute below 1, relative above: float32 round-trips stay equal
# Context is computed at the feed request's requested_at on its device: without the landed
# request these cannot be recomputed, so they are not compared (counted as such).
REQUEST_FEATURES: tuple[str, ...] = tuple(f.name for f in CONTEXT_FEATURES)
MAX_EXAMPLES = 5  # differing impressions quoted in the skew report (one query each)


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
