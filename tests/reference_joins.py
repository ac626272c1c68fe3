"""Plain-Python reference of the training-data join (the oracle the Spark job is tested against).

Deliberately naive — dicts, loops and :mod:`bisect`, no Spark, no pandas joins — so that it is
easy to read and check by eye, in the spirit of Feast's ``tests/utils/feature_records.py``.
Context features still come from :func:`feedrank.context.context_features` (the one
definition; re-implementing it here would test nothing).
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from feedrank.config import HEADS
from feedrank.context import context_features
from feedrank.feature_spec import CONTEXT_FEATURES, ENTITIES, KEEP_PROB_COLUMN, VIEWS, View
from feedrank.schemas import DEVICES
from jobs.training_data import JOIN_ORDER, VIEW_KEY_COLUMNS, keep_hash_py, source_ts_column

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class AsOfIndex:
    """Rows of one feature view indexed by entity key, sorted by (event, created) time."""

    def __init__(self, view: View, rows: Sequence[Mapping]) -> None:
        self.view = view
        self.keys = ENTITIES[view.entity].join_keys
        by_key: dict[tuple, list] = defaultdict(list)
        for row in rows:
            key = tuple(row[k] for k in self.keys)
            by_key[key].append((row["event_timestamp"], row["created_timestamp"], row))
        self.rows = {k: sorted(v, key=lambda t: (t[0], t[1])) for k, v in by_key.items()}
        self.times = {k: [(t[0], t[1]) for t in v] for k, v in self.rows.items()}

    def lookup(self, key: tuple, at: dt.datetime) -> Mapping | None:
        """Latest row with event_timestamp <= at and >= at - ttl, or None."""
        if key not in self.rows:
            return None
        # Everything with event_timestamp <= at sorts before (at, +inf).
        pos = bisect.bisect_right(self.times[key], (at, dt.datetime.max.replace(tzinfo=dt.UTC)))
        if pos == 0:
            return None
        event_ts, _, row = self.rows[key][pos - 1]
        if event_ts < at - dt.timedelta(days=self.view.ttl_days):
            return None
        return row


def epoch_seconds(ts: dt.datetime) -> float:
    """Microseconds since the epoch / 1e6 (the same arithmetic as the Spark job)."""
    return ((ts - _EPOCH) // dt.timedelta(microseconds=1)) / 1e6


def reference_training_examples(
    impressions: Sequence[Mapping],
    engagements: Sequence[Mapping],
    feed_requests: Sequence[Mapping],
    views: Mapping[str, Sequence[Mapping]],
    attribution_window_s: int,
    negative_keep_rate: float,
    validation_start: dt.date,
) -> list[dict]:
    """The rows :func:`jobs.training_data.build_training_examples` must produce.

    Args:
        impressions, engagements, feed_requests: lake rows as dicts.
        views: feature-table rows (dicts) per view name.
        attribution_window_s: label window after ``served_at`` (inclusive).
        negative_keep_rate: keep-rate of all-negative rows.
        validation_start: first day of the validation split.

    Returns:
        One dict per kept impression: training columns, ``split`` and source timestamps;
        missing features are None, context values NaN where an input is missing.
    """
    window = dt.timedelta(seconds=attribution_window_s)
    engaged: dict[tuple, list[Mapping]] = defaultdict(list)
    for e in engagements:
        engaged[(e["request_id"], e["user_id"], e["tweet_id"])].append(e)
    device_of, requested_at_of = {}, {}
    for r in feed_requests:
        device_of.setdefault(r["request_id"], DEVICES.index(r["device"]))
        requested_at_of.setdefault(r["request_id"], r["requested_at"])
    index = {name: AsOfIndex(VIEWS[name], views[name]) for name in JOIN_ORDER}
    out = []
    for imp in impressions:
        served = imp["served_at"]
        # Serving reads features and computes context when the request arrives.
        requested = requested_at_of.get(imp["request_id"], served)
        row: dict = {
            k: imp[k]
            for k in ("request_id", "user_id", "tweet_id", "author_id", "served_at", "position")
        }
        for h in HEADS:
            row[f"label_{h}"] = int(
                any(
                    e["head"] == h and served <= e["engaged_at"] <= served + window
                    for e in engaged[(imp["request_id"], imp["user_id"], imp["tweet_id"])]
                )
            )
        positive = any(row[f"label_{h}"] for h in HEADS)
        if not positive and not keep_hash_py(imp["request_id"], imp["tweet_id"]) < (
            negative_keep_rate
        ):
            continue
        row[KEEP_PROB_COLUMN] = 1.0 if positive else float(negative_keep_rate)
        for name in JOIN_ORDER:
            view = VIEWS[name]
            columns = VIEW_KEY_COLUMNS.get(name, {})
            key = tuple(
                row.get(columns.get(k, k), imp.get(columns.get(k, k))) for k in index[name].keys
            )
            hit = None if any(k is None for k in key) else index[name].lookup(key, requested)
            for feat in view.feature_names:
                row[feat] = None if hit is None else hit[feat]
            row[source_ts_column(name)] = None if hit is None else hit["event_timestamp"]
        device = device_of.get(imp["request_id"])
        ctx = context_features(
            np.array([epoch_seconds(requested)]),
            np.array([np.nan if device is None else device], dtype=np.float64),
            np.array([np.nan if row["tweet_created_ts"] is None else row["tweet_created_ts"]]),
            np.array(
                [np.nan if row["user_active_hour_peak"] is None else row["user_active_hour_peak"]],
                dtype=np.float64,
            ),
        )
        for feat in CONTEXT_FEATURES:
            value = float(ctx[feat.name][0])
            # Arrow stores a NaN coming out of pandas as null: missing is null in the files
            # (and NaN again once a model reads them).
            row[feat.name] = None if math.isnan(value) else value
        row["split"] = "validation" if served.date() >= validation_start else "train"
        out.append(row)
    return out
