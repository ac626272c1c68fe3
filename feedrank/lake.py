"""The lake's layout: the one definition every writer and reader uses.

Layout: ``<root>/<table>/date=YYYY-MM-DD/part-*.parquet`` for the lake tables (schemas in
:func:`table_schema`) and the feature tables (:func:`feature_table_schema`). A partition is
published with one rename (:mod:`feedrank.publish`), so a folder that holds a Parquet file is
complete. Spark jobs read and write it through :mod:`jobs.spark_io`; the simulator, the
experiment report and tests through :func:`write_partitioned` and :func:`read_lake_table`
(pyarrow only, imported when called).

A partition can hold a Parquet file and still be incomplete: landing adds a file per
micro-batch. What a table holds for certain is its *landed-through mark*
(``<root>/_watermarks/<table>.json``, :func:`landed_through`): every event of ``table`` with an
event time before it is in the lake. Landing advances it to its run's start (the end of the
topics it read to) less ``clock.max_event_lag_s``; a simulated backfill to the end of its
world. It never moves back. The retrain DAG's sensor waits for it, not for a file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from feedrank.errors import FeedrankError
from feedrank.publish import write_dir_atomic, write_json_atomic
from feedrank.schemas import EVENT_TIME, table_schema

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("feedrank.lake")
__all__ = [  # table_schema is part of the lake's contract: the schema of each table
    "DATE_COLUMN",
    "WATERMARKS",
    "check_interval",
    "content_hash",
    "days_between",
    "existing_partitions",
    "feature_table_schema",
    "landed_through",
    "mark_landed_through",
    "midnight",
    "parse_date",
    "partition_dir",
    "read_lake_table",
    "table_schema",
    "write_partitioned",
]

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


WATERMARKS = "_watermarks"


def _mark_path(root: Path, table: str) -> Path:
    return Path(root) / WATERMARKS / f"{table}.json"


def landed_through(root: Path, table: str) -> dt.datetime | None:
    """The event time before which every event of ``table`` is in the lake (None: unmarked)."""
    path = _mark_path(root, table)
    if not path.is_file():
        return None
    return dt.datetime.fromisoformat(json.loads(path.read_text())["landed_through"])


def mark_landed_through(root: Path, table: str, through: dt.datetime, by: str) -> dt.datetime:
    """Advance ``table``'s landed-through mark to ``through`` (never back); returns the mark.

    ``by`` names the writer (``landing``, ``backfill``, ...) for whoever reads the file.
    """
    if through.tzinfo is None:
        raise FeedrankError(f"landed-through mark for {table} needs a timezone: {through}")
    current = landed_through(root, table)
    if current is not None and current >= through:
        return current
    path = _mark_path(root, table)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"landed_through": through.astimezone(dt.UTC).isoformat(), "by": by})
    return through


def feature_table_schema(view_name: str) -> pa.Schema:
    """Arrow schema of a feature table: join keys, event/created timestamps, features.

    Raises:
        ValueError: ``view_name`` is not in :data:`feedrank.feature_spec.VIEWS`.
    """
    import pyarrow as pa

    from feedrank.feature_spec import ENTITIES, VIEWS

    if view_name not in VIEWS:
        raise ValueError(f"{view_name} missing from schema (known: {', '.join(VIEWS)})")
    view = VIEWS[view_name]
    ts = pa.timestamp("us", tz="UTC")
    arrow = {"int64": pa.int64(), "float64": pa.float64()}
    return pa.schema(
        [pa.field(k, pa.int64()) for k in ENTITIES[view.entity].join_keys]
        + [pa.field("event_timestamp", ts), pa.field("created_timestamp", ts)]
        + [pa.field(f.name, arrow[f.dtype]) for f in view.features]
    )


def content_hash(path: Path) -> str:
    """SHA-256 of the rows under ``path`` (sorted, schema metadata dropped).

    Independent of file names, row order and file count: two runs that produced the same
    rows hash the same.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    dataset = pads.dataset(
        str(path), format="parquet", partitioning="hive", exclude_invalid_files=True
    )
    table = dataset.to_table()
    table = table.replace_schema_metadata(None)
    if table.num_rows:
        sortable = [
            name
            for name, typ in zip(table.column_names, table.schema.types, strict=True)
            if not pa.types.is_nested(typ)
        ]
        table = table.sort_by([(name, "ascending") for name in sortable])
    digest = hashlib.sha256()
    digest.update(str(table.schema).encode())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table.combine_chunks())
    digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def write_partitioned(
    table_name: str, table: pa.Table, out_dir: Path, others_expected: bool = False
) -> list[Path]:
    """Write ``table`` as ``out_dir/<table_name>/date=.../part-0.parquet``, one per day.

    Rows keep their order within a partition. Each partition is written beside the lake and
    published with one rename, replacing that day's old folder, so a reader never sees a
    half-written partition. Partitions of other days are left alone (the lake may hold
    landed days too) but logged, since they may come from another run (unless
    ``others_expected``: a world extended by new days keeps its earlier ones).

    Returns:
        The published part files.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    us = table.column(EVENT_TIME[table_name]).cast(pa.int64()).to_numpy()
    days = np.floor_divide(us, 86_400 * 1_000_000)
    final = out_dir / table_name
    final.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for day in np.unique(days):
        target = partition_dir(out_dir, table_name, dt.date(1970, 1, 1) + dt.timedelta(int(day)))
        rows = table.filter(pa.array(days == day))
        write_dir_atomic(
            target,
            lambda tmp, rows=rows: pq.write_table(
                rows, tmp / "part-0.parquet", compression="zstd", write_statistics=True
            ),
        )
        written.append(target / "part-0.parquet")
    others = sorted({p.name for p in final.glob("date=*")} - {p.parent.name for p in written})
    if others and not others_expected:
        log.warning("%s keeps partitions this run did not write: %s", table_name, others)
    return written


def read_lake_table(root: Path, table: str, dates: list[str] | None = None) -> pa.Table:
    """Read a lake table back (all partitions, or the given ``YYYY-MM-DD`` dates), in order.

    Args:
        root: the lake folder that holds one folder per table.
        table: a name in ``feedrank.schemas.LAKE_TABLES``.
        dates: partitions to read; all when None.

    Returns:
        The rows with exactly ``table_schema(table)``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = table_schema(table)
    folder = Path(root) / table
    if not folder.is_dir():
        raise FileNotFoundError(f"no table {table!r} under {root}")
    parts = sorted(folder.glob("date=*/part-*.parquet"))
    if dates is not None:
        wanted = {f"date={d}" for d in dates}
        parts = [p for p in parts if p.parent.name in wanted]
    tables = [pq.read_table(p, schema=schema) for p in parts]
    return pa.concat_tables(tables) if tables else schema.empty_table()
