"""Spark reads and writes of lake partitions: the thin I/O shell every batch job shares.

The layout is :mod:`feedrank.lake`'s; the atomic publish is :mod:`feedrank.publish`'s. Spark
writes into a hidden temp folder next to the target, then each finished partition is swapped
in with renames, so a job that dies mid-write leaves the previous output untouched and
readers never see half a partition. Part files are renamed to ``part-00000.parquet`` … so a
rerun replaces exactly the files it wrote.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from feedrank.lake import DATE_COLUMN, existing_partitions, feature_table_schema, partition_dir
from feedrank.publish import swap_in, temp_sibling
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


def rename_parts(folder: Path) -> None:
    """Give Spark's part files stable names so reruns overwrite rather than accumulate."""
    parts = sorted(folder.glob("part-*.parquet"))
    for index, part in enumerate(parts):
        part.rename(folder / f"part-{index:05d}.parquet")
    for junk in list(folder.glob("_*")) + list(folder.glob(".*.crc")):
        if junk.is_file():
            junk.unlink()


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
    tmp = temp_sibling(table_dir)
    try:
        write_spark_parquet(df, tmp, partition_by=DATE_COLUMN)
        written = []
        for day in days:
            fresh = tmp / f"{DATE_COLUMN}={day.isoformat()}"
            target = partition_dir(root, table, day)
            if fresh.is_dir():
                rename_parts(fresh)
                swap_in(fresh, target)
                written.append(target)
            elif target.exists():
                shutil.rmtree(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def read_view(
    spark, features_root: Path, view_name: str, start: dt.date | None, end: dt.date | None
):
    """Feature table ``view_name`` over its date partitions in [start, end]."""
    return read_partitions(
        spark,
        existing_partitions(features_root, view_name, start, end),
        feature_table_schema(view_name),
    )
