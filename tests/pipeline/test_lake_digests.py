"""``jobs.feature_history.lake_digests``: one walk gives, per day, what a walk up to that day
gives, and a rewritten partition changes the digests of its day and after only."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from feedrank import lake
from jobs.feature_history import lake_digest, lake_digests

DAYS = [dt.date(2026, 11, 1) + dt.timedelta(d) for d in range(5)]
TABLES = ["impressions", "engagements"]


def _lake(root: Path) -> Path:
    for table in TABLES:
        for day in DAYS:
            part = lake.partition_dir(root, table, day)
            part.mkdir(parents=True)
            (part / "part-0.parquet").write_bytes(f"{table} {day}".encode())
    return root


def test_one_walk_gives_each_days_digest(tmp_path: Path) -> None:
    root = _lake(tmp_path / "lake")
    digests = lake_digests(root, TABLES, DAYS[1:])
    assert digests == {day: lake_digest(root, TABLES, day) for day in DAYS[1:]}
    assert len(set(digests.values())) == len(DAYS) - 1
    assert lake_digests(root, TABLES, []) == {}


def test_a_rewritten_partition_changes_its_day_and_later_only(tmp_path: Path) -> None:
    root = _lake(tmp_path / "lake")
    before = lake_digests(root, TABLES, DAYS)
    part = lake.partition_dir(root, "engagements", DAYS[2]) / "part-0.parquet"
    stat = part.stat()
    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after = lake_digests(root, TABLES, DAYS)
    assert [after[d] == before[d] for d in DAYS] == [True, True, False, False, False]
    # A table not asked for does not count.
    assert lake_digests(root, ["impressions"], DAYS) != before
    assert (
        lake_digests(root, ["impressions"], DAYS)[DAYS[4]]
        == lake_digests(root, ["impressions"], [DAYS[4]])[DAYS[4]]
    )
