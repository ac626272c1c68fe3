"""Request-time context features, one vectorized definition for every path.

The Feast on-demand view, the Spark training-data job (through pandas) and the scorer's
fast path all call :func:`context_features`, so offline and online values are the same by
construction. The holiday calendar is shared with the simulator, which makes engagement
depend on holiday proximity.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

# Fixed-date holidays that the simulated world observes (UTC dates).
HOLIDAYS: tuple[dt.date, ...] = tuple(
    dt.date(year, month, day)
    for year in range(2024, 2029)
    for month, day in ((1, 1), (2, 14), (7, 4), (10, 31), (11, 26), (12, 24), (12, 25), (12, 31))
)
_HOLIDAY_DAYS = np.array([(h - dt.date(1970, 1, 1)).days for h in HOLIDAYS], dtype=np.float64)


def days_to_nearest_holiday(epoch_seconds: np.ndarray) -> np.ndarray:
    """Absolute days from each timestamp's UTC date to the nearest calendar holiday."""
    day = np.floor(np.asarray(epoch_seconds, dtype=np.float64) / 86400.0)
    idx = np.searchsorted(_HOLIDAY_DAYS, day).clip(1, len(_HOLIDAY_DAYS) - 1)
    before = np.abs(day - _HOLIDAY_DAYS[idx - 1])
    after = np.abs(_HOLIDAY_DAYS[idx] - day)
    return np.minimum(before, after)


def context_features(
    request_ts: np.ndarray | pd.Series,
    device_code: np.ndarray | pd.Series,
    tweet_created_ts: np.ndarray | pd.Series,
    user_active_hour_peak: np.ndarray | pd.Series,
) -> dict[str, np.ndarray]:
    """Context of a (request, candidate) row; inputs broadcast, NaN where an input is missing.

    Args:
        request_ts: request time, seconds since the epoch (UTC).
        device_code: index into ``feedrank.schemas.DEVICES``.
        tweet_created_ts: the candidate's creation time, seconds since the epoch.
        user_active_hour_peak: the user's peak UTC hour, -1 or NaN when unknown.

    Returns:
        One float64 array per name in ``feedrank.feature_spec.CONTEXT_FEATURES``.
    """
    ts = np.asarray(request_ts, dtype=np.float64)
    created = np.asarray(tweet_created_ts, dtype=np.float64)
    peak = np.asarray(user_active_hour_peak, dtype=np.float64)
    peak = np.where(peak < 0, np.nan, peak)
    hour = np.floor(np.mod(ts, 86400.0) / 3600.0)
    # 1970-01-01 was a Thursday (Monday = 0 -> Thursday = 3).
    day_of_week = np.mod(np.floor(ts / 86400.0) + 3.0, 7.0)
    hour_gap = np.abs(hour - peak)
    return {
        "ctx_hour": hour,
        "ctx_day_of_week": day_of_week,
        "ctx_is_weekend": (day_of_week >= 5).astype(np.float64),
        "ctx_days_to_holiday": days_to_nearest_holiday(ts),
        "ctx_device_code": np.asarray(device_code, dtype=np.float64) + 0.0 * ts,
        "ctx_tweet_age_hours": (ts - created) / 3600.0,
        "ctx_hours_from_user_peak": np.minimum(hour_gap, 24.0 - hour_gap),
    }
