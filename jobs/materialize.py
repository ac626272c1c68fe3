"""Materialization job: the feature values of an explicit window, offline -> online.

A thin shell over :func:`feedrank.featurestore.materialize` for callers that schedule work by
interval (the hourly Airflow DAG runs ``feedrank materialize --start --end``): the same window
always writes the same values, so a retry or a rerun is harmless.
"""

from __future__ import annotations

import datetime as dt
import logging

from feedrank.config import Settings, get_settings
from feedrank.featurestore import apply_repo, materialize

log = logging.getLogger(__name__)


def materialize_window(
    start: dt.datetime,
    end: dt.datetime,
    settings: Settings | None = None,
    *,
    apply_first: bool = True,
    include_stream_views: bool = False,
) -> list[str]:
    """Register feature_repo/ (idempotent) and materialize ``[start, end]`` online.

    Returns:
        The names of the materialized views.
    """
    settings = settings or get_settings()
    if apply_first:
        apply_repo(settings)
    names = materialize(settings, start=start, end=end, include_stream_views=include_stream_views)
    log.info("materialized %s for [%s, %s]", names, start, end)
    return names
