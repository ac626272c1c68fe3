"""The lake's layout and its atomic publish: the one definition every writer and reader uses.

Layout: ``<root>/<table>/date=YYYY-MM-DD/part-*.parquet``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from feedrank.errors import FeedrankError

DATE_COLUMN = "date"


def parse_date(text: str, what: str = "date") -> dt.date:
    """An ISO ``YYYY-MM-DD`` date, or a :class:`FeedrankError` with a one-line reason."""
    try:
        return dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise FeedrankError(f"{what} {text!r} is not a date (expected YYYY-MM-DD)") from None


def check_interval(start: dt.date, end: dt.date) -> None:
    """Refuse an empty interval with a one-line reason."""
    if end < start:
        raise FeedrankError(f"end {end} is before start {start}")


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every date from ``start`` to ``end`` inclusive."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def midnight(day: dt.date) -> dt.datetime:
    """00:00 UTC of ``day``."""
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def partition_dir(root: Path, table: str, day: dt.date) -> Path:
    """``<root>/<table>/date=YYYY-MM-DD``."""
    return Path(root) / table / f"{DATE_COLUMN}={day.isoformat()}"


def existing_partitions(
    root: Path, table: str, start: dt.date | None = None, end: dt.date | None = None
) -> list[Path]:
    """Partition folders of ``table`` whose date is within [start, end] (open ends allowed)."""
    base = Path(root) / table
    if not base.is_dir():
        return []
    found = []
    for path in sorted(base.glob(f"{DATE_COLUMN}=*")):
        try:
            day = dt.date.fromisoformat(path.name.split("=", 1)[1])
        except ValueError:
            continue
        if (start is None or day >= start) and (end is None or day <= end):
            found.append(path)
    return found
