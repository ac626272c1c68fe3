"""Reading and writing date partitions: the thin I/O shell every batch job shares.

Layout (input and output alike): ``<root>/<table>/date=YYYY-MM-DD/part-*.parquet``. Writes are
atomic: Spark writes into a hidden temp folder next to the target, then each finished
partition (or a whole run folder) is swapped in with renames, so a job that dies mid-write
leaves the previous output untouched and readers never see half a partition. Part files are
renamed to ``part-00000.parquet`` … so a rerun replaces exactly the files it wrote.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads

from feedrank.lake import (  # noqa: F401 (re-exported until the callers move)
    DATE_COLUMN,
    check_interval,
    days_between,
    existing_partitions,
    midnight,
    parse_date,
    partition_dir,
)
from feedrank.schemas import table_schema


def spark_schema(arrow: pa.Schema):
    """The Spark StructType of an Arrow schema (timestamps become Spark TIMESTAMP)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(arrow)


def read_partitions(spark, paths: Iterable[Path], arrow: pa.Schema):
    """A DataFrame over the given partition folders with exactly ``arrow``'s columns.

    An empty list gives an empty DataFrame with the right schema, so a job over an interval
    without data still produces well-typed (empty) output.
    """
    schema = spark_schema(arrow)
    paths = [str(p) for p in paths]
    if not paths:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*paths)


def read_lake(spark, lake: Path, table: str, start: dt.date | None, end: dt.date | None):
    """Lake table ``table`` over partitions in [start, end], with its contract schema."""
    return read_partitions(spark, existing_partitions(lake, table, start, end), table_schema(table))


def _rename_parts(folder: Path) -> None:
    """Give Spark's part files stable names so reruns overwrite rather than accumulate."""
    parts = sorted(folder.glob("part-*.parquet"))
    for index, part in enumerate(parts):
        part.rename(folder / f"part-{index:05d}.parquet")
    for junk in list(folder.glob("_*")) + list(folder.glob(".*.crc")):
        if junk.is_file():
            junk.unlink()


def _swap(ready: Path, target: Path) -> None:
    """Replace ``target`` by ``ready`` with renames; the old copy is deleted afterwards."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        target.rename(old)
    ready.rename(target)
    if old.exists():
        shutil.rmtree(old)


def temp_dir_for(target: Path) -> Path:
    """A hidden sibling of ``target`` (same filesystem, so the final rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_dir_atomic(target: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp)`` to fill a temp folder, then swap it in as ``target``.

    If ``build`` raises, the temp folder is removed and ``target`` is left as it was.
    """
    tmp = temp_dir_for(target)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap(tmp, target)


def write_spark_parquet(df, path: Path, partition_by: str | None = None) -> None:
    """Spark's Parquet writer (one place, so tests can inject a failure mid-write)."""
    writer = df.write.mode("overwrite")
    if partition_by:
        writer = writer.partitionBy(partition_by)
    writer.parquet(str(path))


def write_date_partitions(df, root: Path, table: str, days: Iterable[dt.date]) -> list[Path]:
    """Write ``df`` (with a ``date`` column) as the partitions ``days`` of ``root/table``.

    Every listed day is replaced, including days with no rows (their old partition is
    removed), so rerunning an interval gives exactly the same partitions.

    Returns:
        The partition folders that now exist.
    """
    table_dir = Path(root) / table
    tmp = temp_dir_for(table_dir)
    try:
        write_spark_parquet(df, tmp, partition_by=DATE_COLUMN)
        written = []
        for day in days:
            fresh = tmp / f"{DATE_COLUMN}={day.isoformat()}"
            target = partition_dir(root, table, day)
            if fresh.is_dir():
                _rename_parts(fresh)
                _swap(fresh, target)
                written.append(target)
            elif target.exists():
                shutil.rmtree(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def content_hash(path: Path) -> str:
    """SHA-256 of the rows under ``path`` (sorted, schema metadata dropped).

    Independent of file names, row order and file count: two runs that produced the same
    rows hash the same.
    """
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


def write_json(path: Path, payload: dict) -> None:
    """Pretty, key-sorted JSON (stable bytes for a stable payload)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def view_schema(view_name: str) -> pa.Schema:
    """Arrow schema of a feature table: join keys, event/created timestamps, features.

    Raises:
        ValueError: ``view_name`` is not in :data:`feedrank.feature_spec.VIEWS`.
    """
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


def read_view(
    spark, features_root: Path, view_name: str, start: dt.date | None, end: dt.date | None
):
    """Feature table ``view_name`` over its date partitions in [start, end]."""
    return read_partitions(
        spark, existing_partitions(features_root, view_name, start, end), view_schema(view_name)
    )
