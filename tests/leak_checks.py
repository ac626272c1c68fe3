"""Leak check: no training row may carry a feature computed from data at/after its impression.

Works on the audit columns the training-data job keeps (one source ``event_timestamp`` per
view and row). A row's *data watermark* for a view is the latest instant whose data can be in
the feature value: for daily snapshots and stream counters ``event_timestamp`` is an
exclusive bound (snapshot of D counts events before D+1 00:00; a counter at T counts events
before T), so the watermark is one microsecond earlier; for event views (tweet attributes)
it is the event itself. A row leaks when a watermark is at or after the moment its features
are used: the request's ``requested_at`` (serving reads features when the request arrives),
else ``served_at``.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from feedrank.errors import FeedrankError
from feedrank.feature_spec import VIEWS
from jobs.training_data import source_ts_column


def data_watermark(view_name: str, source_ts: F.Column) -> F.Column:
    """The latest data instant behind a feature row with ``event_timestamp`` = source_ts."""
    if VIEWS[view_name].kind == "event":
        return source_ts
    return source_ts - F.expr("INTERVAL 1 MICROSECOND")


def find_leaks(audit: DataFrame) -> DataFrame:
    """Rows of ``audit`` whose features saw data at or after the moment they were used.

    Args:
        audit: rows with ``request_id``, ``tweet_id``, ``served_at``, optionally
            ``requested_at``, and, for every view present,
            :func:`jobs.training_data.source_ts_column` (null: no feature row used).

    Returns:
        ``request_id``, ``tweet_id``, ``used_at``, ``view``, ``source_ts`` per leaking cell.
    """
    used_at = F.col("served_at")
    if "requested_at" in audit.columns:
        used_at = F.coalesce(F.col("requested_at"), used_at)
    checks = []
    for name in VIEWS:
        column = source_ts_column(name)
        if column not in audit.columns:
            continue
        leaking = data_watermark(name, F.col(column)) >= used_at
        checks.append(
            audit.where(leaking).select(
                "request_id",
                "tweet_id",
                used_at.alias("used_at"),
                F.lit(name).alias("view"),
                F.col(column).alias("source_ts"),
            )
        )
    if not checks:
        raise FeedrankError("audit carries no source timestamps to check")
    out = checks[0]
    for more in checks[1:]:
        out = out.unionByName(more)
    return out


def check_no_leaks(audit: DataFrame) -> None:
    """Raise :class:`FeedrankError` naming the first leak when any row leaks."""
    leaks = find_leaks(audit)
    first = leaks.limit(1).collect()
    if first:
        row = first[0]
        raise FeedrankError(
            f"feature leak: {leaks.count()} cell(s); e.g. view {row['view']} at "
            f"{row['source_ts']} used for impression ({row['request_id']}, {row['tweet_id']}) "
            f"whose features were read at {row['used_at']}"
        )
