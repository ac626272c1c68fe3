"""Request-time context features, one vectorized definition for every path.

The Feast on-demand view, the Spark training-data job (through pandas) and the scorer's
fast path all call :func:`context_features`, so offline and online values are the same by
construction. The holiday calendar is shared with the simulator, which makes engagement
depend on holiday proximity.

Which context a model may learn from is chosen for a short training window (``training_days``
of the retrain DAG: seven training days and the held-out day): a feature that takes a value
on the held-out day that no training day had is extrapolated by the trees, and the held-out
day's probabilities shift (27–38% on a Sunday or Monday held out after two training days,
docs/quality.md). So there is no day-of-week and no absolute time (the tweet's age replaces
its creation time), and the window is long enough to hold weekend and weekday days, so
``ctx_is_weekend`` always takes on the held-out day a value the trees have seen.
"""

from __future__ import annotations

import datetime as dt
import functools

import holidays
import numpy as np
import pandas as pd

# The simulated world observes the United States' public holidays and its widely kept
# unofficial days (Christmas Eve, New Year's Eve, Valentine's Day, Halloween, ...), as the
# maintained `holidays` package lists them for any year: no table to extend.
HOLIDAY_COUNTRY = "US"
HOLIDAY_CATEGORIES: tuple[str, ...] = ("public", "unofficial")
_EPOCH = dt.date(1970, 1, 1)


@functools.lru_cache(maxsize=64)
def _holiday_days(first_year: int, last_year: int) -> np.ndarray:
    """Sorted holiday dates of ``first_year..last_year`` as days since the epoch."""
    calendar = holidays.country_holidays(
        HOLIDAY_COUNTRY, years=range(first_year, last_year + 1), categories=HOLIDAY_CATEGORIES
    )
    return np.array(sorted((day - _EPOCH).days for day in calendar), dtype=np.float64)


def holidays_between(first: dt.date, last: dt.date) -> list[dt.date]:
    """The calendar's holidays from ``first`` to ``last`` (inclusive), in order."""
    days = _holiday_days(first.year, last.year)
    lo, hi = (first - _EPOCH).days, (last - _EPOCH).days
    return [_EPOCH + dt.timedelta(days=int(d)) for d in days if lo <= d <= hi]


def days_to_nearest_holiday(epoch_seconds: np.ndarray) -> np.ndarray:
    """Absolute days from each timestamp's UTC date to the nearest calendar holiday.

    NaN timestamps give NaN. The calendar is taken for the years the timestamps span plus
    one on each side, so a date in early January or late December sees its neighbours.
    """
    day = np.floor(np.asarray(epoch_seconds, dtype=np.float64) / 86400.0)
    known = day[np.isfinite(day)]
    if known.size == 0:
        return np.full(day.shape, np.nan)
    first = (_EPOCH + dt.timedelta(days=int(known.min()))).year - 1
    last = (_EPOCH + dt.timedelta(days=int(known.max()))).year + 1
    table = _holiday_days(first, last)
    idx = np.searchsorted(table, np.nan_to_num(day)).clip(1, len(table) - 1)
    before = np.abs(day - table[idx - 1])
    after = np.abs(table[idx] - day)
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
    # 1970-01-01 was a Thursday (Monday = 0 -> Thursday = 3); Saturday = 5, Sunday = 6.
    day_of_week = np.mod(np.floor(ts / 86400.0) + 3.0, 7.0)
    hour_gap = np.abs(hour - peak)
    return {
        "ctx_hour": hour,
        "ctx_is_weekend": (day_of_week >= 5).astype(np.float64),
        "ctx_days_to_holiday": days_to_nearest_holiday(ts),
        "ctx_device_code": np.asarray(device_code, dtype=np.float64) + 0.0 * ts,
        "ctx_tweet_age_hours": (ts - created) / 3600.0,
        "ctx_hours_from_user_peak": np.minimum(hour_gap, 24.0 - hour_gap),
    }
