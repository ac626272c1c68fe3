"""The features tests' shared world: sizes, the as-of moment and how to materialize it.

A module with a unique name (not ``conftest``): test modules of several folders import
helpers, and ``from conftest import`` would resolve to whichever conftest loaded first.
"""

from __future__ import annotations

import datetime as dt

from feedrank.config import Settings

START = dt.date(2026, 11, 1)
DAYS = 2
# Not on any snapshot (midnight) or stream tick (full hour) boundary.
AS_OF = dt.datetime(2026, 11, 2, 13, 17, 11, tzinfo=dt.UTC)
SIZES = {"users": 60, "authors": 15, "tweets": 400, "topics": 6}


def materialize_as_of(settings: Settings, as_of: dt.datetime) -> None:
    """Online store = the values valid at ``as_of``: each view's window is its TTL."""
    from feedrank import feature_spec as spec
    from feedrank.featurestore import materialize

    by_ttl: dict[int, list[str]] = {}
    for view in spec.VIEWS.values():
        by_ttl.setdefault(view.ttl_days, []).append(view.name)
    for ttl_days, names in sorted(by_ttl.items()):
        materialize(settings, start=as_of - dt.timedelta(days=ttl_days), end=as_of, views=names)
