"""``feedrank.lake.content_hash``: the same rows hash the same however they are stored, and
any change to a value, a null or a row count changes the hash."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feedrank import lake

ROWS = {
    "request_id": ["r-1", "r-22", None, "", "r-1"],
    "user_id": [1, 2, 3, None, 5],
    "score": [0.5, -0.0, None, 1e-300, 2.0],
    "served_at": [dt.datetime(2026, 11, d, tzinfo=dt.UTC) for d in (1, 2, 3, 4, 5)],
    "day": [dt.date(2026, 11, d) for d in (1, 2, 3, 4, 5)],
    "liked": [True, False, None, True, False],
    "tags": [[1, 2], [], None, [3], [2, 1]],
}


def _write(folder: Path, table: pa.Table, pieces: list[list[int]]) -> Path:
    folder.mkdir(parents=True)
    for i, rows in enumerate(pieces):
        pq.write_table(table.take(pa.array(rows, pa.int64())), folder / f"part-{i:05d}.parquet")
    return folder


def _hash(folder: Path, table: pa.Table, pieces: list[list[int]] | None = None) -> str:
    return lake.content_hash(_write(folder, table, pieces or [list(range(table.num_rows))]))


def test_same_rows_in_any_order_and_file_split_hash_the_same(tmp_path: Path) -> None:
    table = pa.table(ROWS)
    whole = _hash(tmp_path / "whole", table)
    assert _hash(tmp_path / "split", table, [[4, 2], [0], [3, 1]]) == whole
    assert _hash(tmp_path / "reversed", table, [[4, 3, 2, 1, 0]]) == whole
    with_metadata = table.replace_schema_metadata({"writer": "spark"})
    assert _hash(tmp_path / "metadata", with_metadata) == whole
    # Many batches: larger than one read batch, rows shuffled between files.
    big = pa.table({"k": list(range(200_000)), "v": [float(i % 7) for i in range(200_000)]})
    order = list(range(200_000))
    assert _hash(tmp_path / "big1", big, [order[::2], order[1::2]]) == _hash(
        tmp_path / "big2", big, [order[::-1]]
    )


@pytest.mark.parametrize(
    ("column", "row", "value"),
    [
        ("request_id", 1, "r-2"),  # one character less
        ("request_id", 3, None),  # empty string -> null
        ("user_id", 3, 0),  # null -> 0
        ("score", 1, 0.0),  # -0.0 -> 0.0
        ("score", 3, 1e-299),
        ("served_at", 0, dt.datetime(2026, 11, 1, 0, 0, 0, 1, tzinfo=dt.UTC)),
        ("day", 4, dt.date(2026, 11, 6)),
        ("liked", 2, False),
        ("tags", 4, [1, 2]),
    ],
)
def test_one_changed_value_changes_the_hash(
    tmp_path: Path, column: str, row: int, value: object
) -> None:
    table = pa.table(ROWS)
    changed = dict(ROWS)
    changed[column] = [value if i == row else v for i, v in enumerate(ROWS[column])]
    assert _hash(tmp_path / "a", table) != _hash(
        tmp_path / "b", pa.table(changed, schema=table.schema)
    )


def test_swapped_columns_a_duplicated_row_and_a_missing_row_change_the_hash(
    tmp_path: Path,
) -> None:
    table = pa.table({"a": [1, 2, 3], "b": [4, 5, 6]})
    base = _hash(tmp_path / "base", table)
    swapped = pa.table({"a": [4, 2, 3], "b": [1, 5, 6]})
    assert _hash(tmp_path / "swapped", swapped) != base
    assert _hash(tmp_path / "dup", table, [[0, 1, 2, 2]]) != base
    assert _hash(tmp_path / "missing", table, [[0, 1]]) != base
    assert _hash(tmp_path / "empty", table, [[]]) != base
