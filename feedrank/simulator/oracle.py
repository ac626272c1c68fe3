"""The oracle's offline metrics: how well the true probabilities rank a logged day.

A head's label is 1 when the impression got that engagement within the attribution window
(the same rule the training-data job applies), so these numbers are the ceiling any model
trained on the lake can reach.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feedrank.config import HEADS
from feedrank.lake import read_lake_table
from feedrank.offline_metrics import head_metrics


def oracle_labels(root: Path, date: str, attribution_window_s: int) -> pa.Table:
    """The oracle rows of one day with a 0/1 ``label_<head>`` column per head.

    Args:
        root: lake folder written by :func:`~feedrank.simulator.backfill.simulate_backfill`.
        date: the day, ``YYYY-MM-DD``.
        attribution_window_s: engagements later than this after the impression do not count.

    Returns:
        The ``oracle`` rows of ``date`` plus ``label_like`` … ``label_negative`` (int8).
    """
    day = dt.date.fromisoformat(date)
    oracle = read_lake_table(root, "oracle", [date])
    if oracle.num_rows == 0:
        raise FileNotFoundError(f"no oracle rows for {date} under {root}")
    # Engagements of late-evening impressions land in the next day's partition.
    next_day = (day + dt.timedelta(days=1)).isoformat()
    engagements = read_lake_table(root, "engagements", [date, next_day])
    keys = ["request_id", "tweet_id"]
    served_us = oracle.column("served_at").cast(pa.int64()).to_numpy()
    window_us = attribution_window_s * 1_000_000
    out = oracle
    for head in HEADS:
        first = (
            engagements.filter(pc.equal(engagements.column("head"), head))
            .group_by(keys)
            .aggregate([("engaged_at", "min")])
        )
        joined = (
            oracle.select(keys)
            .append_column("row", pa.array(np.arange(oracle.num_rows)))
            .join(first, keys=keys, join_type="left outer")
            .sort_by("row")
        )
        engaged = joined.column("engaged_at_min").cast(pa.int64())
        engaged_us = engaged.fill_null(np.iinfo(np.int64).max).to_numpy()
        label = (engaged_us - served_us <= window_us).astype(np.int8)
        out = out.append_column(f"label_{head}", pa.array(label))
    return out


def oracle_metrics(root: Path, date: str, attribution_window_s: int) -> dict[str, dict]:
    """Per-head ROC-AUC, PR-AUC, log loss, RCE and calibration of the oracle on one day."""
    table = oracle_labels(root, date, attribution_window_s)
    return {
        head: head_metrics(
            table.column(f"label_{head}").to_numpy(), table.column(f"p_{head}").to_numpy()
        )
        for head in HEADS
    }
