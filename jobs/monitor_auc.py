"""Monitoring: live AUC of the served model versions on their own logged vectors.

**AUC** (:func:`auc_report`) — labels from :func:`jobs.training_data.attribute_labels`
(the pipeline's attribution window), predictions recomputed from the logged vectors with
the served model version (:meth:`feedrank.model.LoadedModel.predict_heads`); ROC-AUC
per head (:func:`feedrank.offline_metrics.head_metrics`). Only impressions whose attribution
window closed within the landed engagements (:func:`label_horizon`) are judged: the retrain
DAG monitors day ``D`` right after midnight, when engagements with the last hour's
impressions are still landing, and a label still on its way is not a negative. The others
are counted (``pending_labels``).

Part of the monitoring run (:mod:`jobs.monitor`); the threshold comes from ``settings.monitoring``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from feedrank.config import HEADS
from feedrank.errors import FeedrankError
from feedrank.feature_spec import model_features
from feedrank.offline_metrics import head_metrics
from jobs.monitor_skew import served_with_features
from jobs.training_data import ID_KEYS, attribute_labels, keep_hash

AUC_MAX_ROWS = 200_000  # labelled impressions brought to the driver for prediction
AUC_MIN_PER_CLASS = 10  # a head's AUC is judged only with this many positives and negatives
# The label horizon when no engagement has landed: no label is final.
NO_LABELS_YET = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


Predictor = Callable[[str, np.ndarray], Mapping[str, np.ndarray]]


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


def logged_feature_matrix(features: pd.Series) -> np.ndarray:
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
        X = logged_feature_matrix(group["features"])
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
