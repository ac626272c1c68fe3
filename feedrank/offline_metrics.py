"""Offline metrics of one engagement head, shared by training, evaluation and the simulator.

ROC-AUC, PR-AUC, log loss and the reliability curve come from scikit-learn; RCE (the RecSys
Challenge 2020 metric) and calibration are the only hand-written parts.
"""

from __future__ import annotations

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

# Probabilities are clipped away from 0 and 1 so one confident miss cannot make log loss inf.
PROB_EPS = 1e-7


def _as_arrays(y_true: np.ndarray, p_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.clip(np.asarray(p_pred, dtype=np.float64).ravel(), PROB_EPS, 1.0 - PROB_EPS)
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size == 0:
        raise ValueError("no rows to evaluate")
    return y, p


def rce(y_true: np.ndarray, p_pred: np.ndarray) -> float:
    """Relative cross entropy: ``100·(1 − logloss(y, p) / logloss(y, mean(y)))``.

    0 means no better than always predicting the base rate; higher is better. NaN when the
    labels hold a single class (the baseline log loss is then 0).
    """
    y, p = _as_arrays(y_true, p_pred)
    base_rate = float(np.clip(y.mean(), PROB_EPS, 1.0 - PROB_EPS))
    baseline = log_loss(y, np.full_like(p, base_rate), labels=[0.0, 1.0])
    if baseline <= 0.0 or y.min() == y.max():
        return float("nan")
    return float(100.0 * (1.0 - log_loss(y, p, labels=[0.0, 1.0]) / baseline))


def head_metrics(y_true: np.ndarray, p_pred: np.ndarray) -> dict[str, float]:
    """ROC-AUC, PR-AUC, log loss, RCE and calibration of one head's predictions.

    Args:
        y_true: 0/1 labels.
        p_pred: predicted probabilities.

    Returns:
        ``rows``, ``positive_rate``, ``roc_auc``, ``pr_auc``, ``log_loss``, ``rce`` and
        ``calibration`` (mean prediction / mean label); the ranking metrics are NaN when
        only one class is present.
    """
    y, p = _as_arrays(y_true, p_pred)
    both_classes = 0.0 < y.mean() < 1.0
    return {
        "rows": float(y.size),
        "positive_rate": float(y.mean()),
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both_classes else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0.0, 1.0])),
        "rce": rce(y, p),
        "calibration": float(p.mean() / y.mean()) if y.mean() > 0 else float("nan"),
    }


def calibration_deciles(
    y_true: np.ndarray,
    p_pred: np.ndarray,
    repeats: np.ndarray | None = None,
    n_bins: int = 10,
) -> list[dict[str, float]]:
    """Predicted vs observed rate in each quantile bin (decile) of the prediction.

    scikit-learn's ``calibration_curve(strategy="quantile")`` gives each bin's mean prediction
    and label rate; the impressions per bin come from the same edges (the prediction's
    quantiles). Each row counts ``repeats`` times (``1/keep_prob`` of down-sampled rows), so
    the bins are deciles of impressions, as served. Tied predictions can merge bins: fewer
    than ``n_bins`` entries then.

    Args:
        y_true: 0/1 labels.
        p_pred: predicted probabilities.
        repeats: times each row counts (default 1).
        n_bins: quantile bins.

    Returns:
        One entry per non-empty bin, lowest predictions first: ``impressions``,
        ``positives``, ``predicted`` (mean prediction), ``observed`` (label rate) and
        ``relative_error`` ``|observed − predicted| / predicted`` (finite where a bin has no
        positive) and ``z``, the positives' distance from the predicted count in binomial
        standard deviations (|z| > 2: off by more than the bin's own sampling noise).
    """
    y, p = _as_arrays(y_true, p_pred)
    counts = np.ones(y.size, np.int64) if repeats is None else np.asarray(repeats, np.int64)
    if counts.shape != y.shape:
        raise ValueError(f"repeats and labels differ in length: {counts.size} vs {y.size}")
    y, p = np.repeat(y, counts), np.repeat(p, counts)
    observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy="quantile")
    edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    bins = np.searchsorted(edges[1:-1], p)
    impressions = np.bincount(bins, minlength=n_bins)
    positives = np.bincount(bins, weights=y, minlength=n_bins)[impressions > 0]
    impressions = impressions[impressions > 0]
    if impressions.size != observed.size:
        raise ValueError(
            f"calibration_curve returned {observed.size} bins, the quantile edges give "
            f"{impressions.size}: scikit-learn's binning changed"
        )
    return [
        {
            "impressions": int(n),
            "positives": float(k),
            "predicted": float(q),
            "observed": float(o),
            "relative_error": float(abs(o - q) / q),
            "z": float((k - n * q) / np.sqrt(n * q * (1.0 - q))),
        }
        for n, k, q, o in zip(impressions, positives, predicted, observed, strict=True)
    ]


def max_decile_error(
    deciles: list[dict[str, float]], min_impressions: int, key: str = "relative_error"
) -> float | None:
    """The worst ``|key|`` (``relative_error`` or ``z``) over bins with at least
    ``min_impressions`` impressions.

    ``None`` when no bin is that large (too few impressions to judge).
    """
    errors = [abs(d[key]) for d in deciles if d["impressions"] >= min_impressions]
    return max(errors) if errors else None
