"""The learning-curve command's grid, table and bad input (the runs themselves are long)."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from feedrank.config import HEADS
from jobs.quality_curve import (
    fit_days_axis,
    grid_points,
    merge_rows,
    plot_curve,
    quality_curve,
    render_fit,
    render_table,
)

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
    assert table[-1].endswith("| – / – / – / – / – |")  # no calibration-decile metric
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
    curve_md = (tmp_path / "curve.md").read_text()
    assert curve_md.startswith(render_table(merged)) and "Fit along the days axis" in curve_md
    assert not list(tmp_path.glob("d*_u*"))  # no point's run folder


def test_fit_finds_the_days_at_which_a_head_reaches_the_goal() -> None:
    rows = []
    for days, users in ((2, 1_000), (4, 1_000), (8, 1_000), (4, 2_000)):
        n = 100_000 * (days + 1)  # impressions: 100,000 per simulated day
        shares = {
            "like": 0.2 + 0.05 * math.log(n),  # 0.90 at ln N = 14
            "reply": 0.9 - 0.01 * days,  # moves away from the goal
            "retweet": 1 - 0.5 * (n / 300_000) ** -0.5,  # gap 0.10 at N = 7.5 M
            "click": 0.5,
            "negative": 0.5,
        }
        if users != 1_000:
            shares = dict.fromkeys(HEADS, 0.99)  # the users axis is not fitted
        heads = {h: {"rce": 1.0, "ceiling_rce": 1.0, "share_of_ceiling": shares[h]} for h in HEADS}
        rows.append({"days": days, "users": users, "impressions": n, "heads": heads})
    fit = fit_days_axis(rows, base_users=1_000)
    like = fit["like"]["log_linear"]
    assert fit["like"]["days"] == [2, 4, 8]
    assert like["slope"] == pytest.approx(0.05) and like["max_abs_residual"] < 1e-9
    assert like["impressions_at_goal"] == pytest.approx(math.exp(14))
    assert like["days_at_goal"] == pytest.approx(math.exp(14) / 100_000 - 1)
    assert fit["reply"]["log_linear"]["impressions_at_goal"] is None
    assert fit["reply"]["power_gap"]["days_at_goal"] is None
    assert fit["retweet"]["power_gap"]["slope"] == pytest.approx(-0.5)
    assert fit["retweet"]["power_gap"]["impressions_at_goal"] == pytest.approx(7_500_000)
    table = render_fit(fit)
    assert "| reply | 2, 4, 8 |" in table and "not toward it" in table


@pytest.mark.parametrize(
    "args",
    [["--days", "2,x"], ["--users", "5"], ["--held-out", "11/09/2026"], ["--merge", "nope.json"]],
)
def test_bad_input_exits_non_zero_with_one_line(args: list[str]) -> None:
    exe = str(Path(sys.executable).with_name("feedrank"))
    done = subprocess.run([exe, "quality-curve", *args], capture_output=True, text=True)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
