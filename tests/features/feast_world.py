"""The features tests' shared world: sizes, the as-of moment and how to materialize it.

A module with a unique name (not ``conftest``): test modules of several folders import
helpers, and ``from conftest import`` would resolve to whichever conftest loaded first.
"""

from __future__ import annotations

import datetime as dt

from feedrank.featurestore import materialize_as_of

__all__ = ["AS_OF", "DAYS", "SIZES", "START", "materialize_as_of"]

START = dt.date(2026, 11, 1)
DAYS = 2
# Not on any snapshot (midnight) or stream tick (full hour) boundary.
AS_OF = dt.datetime(2026, 11, 2, 13, 17, 11, tzinfo=dt.UTC)
SIZES = {"users": 60, "authors": 15, "tweets": 400, "topics": 6}
