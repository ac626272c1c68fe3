"""Offline metrics of one engagement head, shared by training, evaluation and the simulator.

ROC-AUC, PR-AUC and log loss come from scikit-learn; RCE (the RecSys Challenge 2020 metric)
and calibration are the only hand-written parts.
"""

from __future__ import annotations

import numpy as np
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
