"""``training.day_ahead_calibration``: a per-head Platt map fitted on the last training day.

Off by default (docs/quality.md); when on, :func:`fit_day_ahead_calibration` fits it after the
heads and the model folder stores it (:class:`feedrank.model.DayAheadCalibration`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from feedrank import feature_spec
from feedrank.config import Settings
from feedrank.model import DayAheadCalibration, head_probabilities
from jobs.train_heads import HeadResult
from jobs.train_inputs import TrainingData, learning_matrix, negative_weights

log = logging.getLogger("feedrank.train")


def fit_day_ahead_calibration(
    data: TrainingData, heads: dict[str, HeadResult], settings: Settings
) -> dict[str, Any]:
    """Per-head Platt calibration fitted on the last training day, scored day-ahead.

    The final heads have seen every training day, so their output on the last one says
    nothing about the next day. Heads with the same parameters and tree count, trained on
    the days before it, score it instead: what they get wrong there (the shift from one day
    to the next: a growing history, a day's own level) is what the final heads will get
    wrong on the held-out day. A logistic regression of the day's labels on
    ``logit(q)`` (``q`` recalibrated for downsampling; every row weighted ``1/keep_prob`` so
    the day counts at its true rate) gives ``slope`` and ``intercept`` per head.

    Returns:
        The record :func:`feedrank.model_files.save_model` stores: ``heads`` (``{head:
        DayAheadCalibration}``, empty when the window has a single training day or the day
        has no positive of a head) and how it was fitted.
    """
    import xgboost as xgb
    from sklearn.linear_model import LogisticRegression

    days = pd.to_datetime(data.train["served_at"], utc=True).dt.strftime("%Y-%m-%d")
    last = days.max()
    earlier = (days < last).to_numpy()
    record: dict[str, Any] = {"method": "platt", "fitted_on": last, "heads": {}}
    if not earlier.any():
        record["skipped"] = "one training day: no day to score day-ahead"
        return record
    fit_rows, cal_rows = data.train[earlier], data.train[~earlier]
    dfit = xgb.QuantileDMatrix(
        learning_matrix(fit_rows),
        feature_names=feature_spec.model_features(),
        nthread=settings.training.nthread,
    )
    X_cal = learning_matrix(cal_rows)
    row_weight = 1.0 / cal_rows[feature_spec.KEEP_PROB_COLUMN].to_numpy(dtype=np.float64)
    rate = data.negative_keep_rate
    for head, result in heads.items():
        y = cal_rows[f"label_{head}"].to_numpy()
        if not 0 < y.sum() < len(y):
            continue
        dfit.set_label(fit_rows[f"label_{head}"].to_numpy(np.float32))
        dfit.set_weight(
            negative_weights(
                fit_rows[f"label_{head}"].to_numpy(),
                fit_rows[feature_spec.KEEP_PROB_COLUMN].to_numpy(),
                rate,
            ).astype(np.float32)
        )
        params = {k: v for k, v in result.params.items() if k != "num_workers"}
        booster = xgb.train(params, dfit, num_boost_round=result.best_iteration + 1)
        q = head_probabilities({head: booster}, X_cal, {head: rate})[head]
        q = np.clip(q, 1e-12, 1.0 - 1e-12)
        z = np.log(q / (1.0 - q)).reshape(-1, 1)
        # No penalty: two parameters on a day of rows need none, and a penalty would pull
        # the slope towards 0.
        platt = LogisticRegression(C=np.inf, solver="lbfgs")
        platt.fit(z, y, sample_weight=row_weight)
        slope, intercept = float(platt.coef_[0, 0]), float(platt.intercept_[0])
        if slope <= 0:
            log.warning("head %s: day-ahead calibration slope %.3f; left out", head, slope)
            continue
        record["heads"][head] = DayAheadCalibration(slope, intercept)
        log.info("head %s: day-ahead calibration slope %.3f intercept %.3f", head, slope, intercept)
    return record
