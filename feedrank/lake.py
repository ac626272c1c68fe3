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
    import numpy as np
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


def dated_folders(base: Path, column: str = DATE_COLUMN) -> list[tuple[dt.date, Path]]:
    """``(day, folder)`` of every ``<base>/<column>=YYYY-MM-DD`` folder, in date order; names
    that are not a date are skipped (none when ``base`` does not exist)."""
    found = []
    for path in Path(base).glob(f"{column}=*"):
        try:
            found.append((dt.date.fromisoformat(path.name.split("=", 1)[1]), path))
        except ValueError:
            continue
    return sorted(found)


def existing_partitions(
    root: Path, table: str, start: dt.date | None = None, end: dt.date | None = None
) -> list[Path]:
    """Partition folders of ``table`` whose date is within [start, end] (open ends allowed)."""
    return [
        path
        for day, path in dated_folders(Path(root) / table)
        if (start is None or day >= start) and (end is None or day <= end)
    ]


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


_MASK64 = (1 << 64) - 1
_NULL_TAG = 0x6E756C6C5F746167  # what a null contributes in place of a value ("null_tag")
_LANE_TAG = 0x9E3779B97F4A7C15  # seeds the second, independent sum over the rows
_HASH_BATCH_ROWS = 65_536


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on every element (uint64 arithmetic wraps)."""
    import numpy as np

    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _value_bits(column: pa.Array) -> np.ndarray:
    """One uint64 per row that identifies the row's value of ``column`` (nulls included)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    typ = column.type
    if pa.types.is_boolean(typ) or pa.types.is_integer(typ):
        bits = pc.fill_null(column.cast(pa.int64()), 0).to_numpy().view(np.uint64)
    elif pa.types.is_floating(typ):
        bits = pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy().view(np.uint64)
    elif pa.types.is_date32(typ):
        bits = pc.fill_null(column.cast(pa.int32()).cast(pa.int64()), 0).to_numpy().view(np.uint64)
    elif pa.types.is_temporal(typ):
        bits = pc.fill_null(column.cast(pa.int64()), 0).to_numpy().view(np.uint64)
    elif pa.types.is_string(typ) or pa.types.is_binary(typ) or pa.types.is_large_string(typ):
        bits = _bytes_bits(column.cast(pa.large_binary()))
    else:  # nested and rare types: each value's canonical text
        bits = np.fromiter(
            (
                int.from_bytes(hashlib.blake2b(repr(v).encode(), digest_size=8).digest(), "little")
                for v in column.to_pylist()
            ),
            dtype=np.uint64,
            count=len(column),
        )
    if column.null_count:
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        bits = np.where(valid, bits, np.uint64(_NULL_TAG))
    return bits


def _bytes_bits(column: pa.LargeBinaryArray) -> np.ndarray:
    """Per row, a hash of its bytes and their positions (vectorised over the value buffer)."""
    import numpy as np

    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[
        column.offset : column.offset + len(column) + 1
    ]
    data = np.frombuffer(column.buffers()[2] or b"", dtype=np.uint8)[offsets[0] : offsets[-1]]
    starts = offsets[:-1] - offsets[0]
    lengths = np.diff(offsets)
    position = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths)
    per_byte = _mix64(data.astype(np.uint64) | (position.astype(np.uint64) << np.uint64(8)))
    running = np.concatenate([np.zeros(1, np.uint64), np.cumsum(per_byte, dtype=np.uint64)])
    return _mix64((running[starts + lengths] - running[starts]) ^ lengths.astype(np.uint64))


def content_hash(path: Path) -> str:
    """SHA-256 of the rows under ``path``: of the schema (metadata dropped), the row count and
    two sums over the rows of a 64-bit hash of each row's values.

    Independent of file names, row order and file count: two runs that produced the same
    rows hash the same. The files are read batch by batch, so memory stays flat whatever
    their size.
    """
    import numpy as np
    import pyarrow.dataset as pads

    dataset = pads.dataset(
        str(path), format="parquet", partitioning="hive", exclude_invalid_files=True
    )
    schema = dataset.schema.remove_metadata()
    rows = lane_a = lane_b = 0
    for batch in dataset.to_batches(batch_size=_HASH_BATCH_ROWS):
        row_hash = np.zeros(batch.num_rows, dtype=np.uint64)
        for column in batch.columns:
            row_hash = _mix64(row_hash ^ _value_bits(column))
        rows += batch.num_rows
        lane_a = (lane_a + int(row_hash.sum(dtype=np.uint64))) & _MASK64
        lane_b = (
            lane_b + int(_mix64(row_hash ^ np.uint64(_LANE_TAG)).sum(dtype=np.uint64))
        ) & _MASK64
    digest = hashlib.sha256()
    digest.update(str(schema).encode())
    digest.update(f"\n{rows}\t{lane_a:016x}\t{lane_b:016x}".encode())
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
