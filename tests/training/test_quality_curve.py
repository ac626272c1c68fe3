"""The learning-curve command's grid, table and bad input (the runs themselves are long)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from feedrank.config import HEADS
from jobs.quality_curve import grid_points, merge_rows, plot_curve, quality_curve, render_table

pytestmark = pytest.mark.unit


def test_grid_is_the_days_axis_then_the_users_axis_without_repeats() -> None:
    points = grid_points([2, 4, 8], [1_000, 2_000, 4_000], base_days=4, base_users=1_000)
    assert points == [(2, 1_000), (4, 1_000), (8, 1_000), (4, 2_000), (4, 4_000)]


def row(days: int, users: int, rce: float) -> dict:
    heads = {h: {"rce": rce, "ceiling_rce": 20.0, "share_of_ceiling": rce / 20.0} for h in HEADS}
    ndcg = {"model": 0.6, "ceiling": 0.7, "oracle": 0.72}
    return {"days": days, "users": users, "impressions": 1000 * days, "heads": heads,
            "ndcg10": ndcg}  # fmt: skip


def test_table_and_plot_show_model_over_ceiling_per_head(tmp_path: Path) -> None:
    rows = [row(2, 1_000, 10.0), row(4, 1_000, 12.0), row(4, 2_000, 14.0)]
    table = render_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert "| 4 | 2000 | 4,000 | 14.0 / 20.0 (0.70)" in table[-1]
    plot_curve(rows, tmp_path / "curve.png", base_days=4, base_users=1_000)
    assert (tmp_path / "curve.png").stat().st_size > 1_000


def test_merged_points_are_not_rerun_and_join_the_table(tmp_path: Path) -> None:
    days_axis = [row(2, 1_000, 10.0), row(4, 1_000, 12.0), row(8, 1_000, 15.0)]
    users_axis = [row(4, 2_000, 14.0), row(4, 1_000, 12.5)]
    merged = merge_rows(days_axis, users_axis)
    # One row per point, the later run's replacing the earlier's; days axis, then users axis.
    assert [(r["days"], r["users"]) for r in merged] == [(2, 1_000), (4, 1_000), (8, 1_000),
                                                       (4, 2_000)]  # fmt: skip
    assert merged[1]["heads"]["like"]["rce"] == 12.5
    # Every point of the grid is in the earlier rows: nothing runs, the files are written.
    rows = quality_curve(tmp_path, [2, 4], [1_000, 2_000], 4, 1_000, dt.date(2026, 11, 9), merged)
    assert rows == merged
    assert json.loads((tmp_path / "curve.json").read_text()) == merged
    assert len((tmp_path / "curve.md").read_text().splitlines()) == 2 + len(merged)
    assert not list(tmp_path.glob("d*_u*"))  # no point's run folder


@pytest.mark.parametrize(
    "args",
    [["--days", "2,x"], ["--users", "5"], ["--held-out", "11/09/2026"], ["--merge", "nope.json"]],
)
def test_bad_input_exits_non_zero_with_one_line(args: list[str]) -> None:
    exe = str(Path(sys.executable).with_name("feedrank"))
    done = subprocess.run([exe, "quality-curve", *args], capture_output=True, text=True)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
