"""``feedrank quality-curve``: model RCE against the knowable ceiling as the data grows.

Long because: the grid's runs, table, fit and plot of one learning curve.

Each point of the grid is a fresh run folder under ``--out`` (its own lake, features,
training data, model and report): simulate ``days + 1`` days ending with the same held-out
day, build features and point-in-time training data over them, train, evaluate. Everything
but the days of history and the number of users is the configuration's (seed, topics,
author share, ``FEEDRANK_SIMULATOR__*``), so the curve says whether the gap to the
``ceiling`` closes with data (a data gap) or stays (a model gap).

Writes ``curve.json``, ``curve.md`` (the table and the fit) and ``curve.png`` (model RCE /
ceiling RCE per head against training impressions, with the fitted lines) into ``--out``;
``--merge`` takes an earlier run's ``curve.json``, whose points are not rerun and join the
table and plot. Not part of ``make test``: each point runs the whole batch pipeline.

The fit (:func:`fit_days_axis`) extrapolates the days axis to the share of the ceiling the
issue asks for (``GOAL_SHARE``): where a head gets there with more days, that part of its gap
is data-limited; where it does not trend there, it is not.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from feedrank.config import HEADS, get_settings
from feedrank.errors import FeedrankError

log = logging.getLogger("feedrank.quality_curve")

DEFAULT_DAYS = (2, 4, 8)
DEFAULT_USERS = (1_000, 2_000, 4_000)
# Issue #25: per head, model RCE at least this share of the ceiling's.
GOAL_SHARE = 0.90


def grid_points(
    days: list[int], users: list[int], base_days: int, base_users: int
) -> list[tuple[int, int]]:
    """The days axis at ``base_users`` and the users axis at ``base_days``, without repeats."""
    points = [(d, base_users) for d in days] + [(base_days, u) for u in users]
    return list(dict.fromkeys(points))


def _run(args: list[str], env: dict[str, str], log_path: Path) -> None:
    exe = Path(sys.executable).with_name("feedrank")
    with log_path.open("a") as out:
        out.write(f"$ feedrank {' '.join(args)}\n")
        out.flush()
        done = subprocess.run([str(exe), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise FeedrankError(f"'feedrank {' '.join(args)}' failed; see {log_path}")


def run_point(out: Path, days: int, users: int, held_out: dt.date) -> dict[str, Any]:
    """Simulate, build, train and evaluate one grid point in its own run folder.

    Args:
        out: the curve's folder; the point's run folder is ``out/d<days>_u<users>``.
        days: days of history before the held-out day.
        users: simulated users.
        held_out: the validation day (the same for every point).

    Returns:
        The point's row: sizes, seconds, and per head model / no_pair / ceiling / oracle RCE.
    """
    home = out / f"d{days}_u{users}"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "FEEDRANK_PATHS__HOME": str(home),
        # Every child (features, evaluation's world) must rebuild the same world.
        "FEEDRANK_SIMULATOR__USERS": str(users),
    }
    first = held_out - dt.timedelta(days=days)
    start, end = first.isoformat(), held_out.isoformat()
    run = home / "training" / f"{start}_{end}"
    log_path = home / "quality-curve.log"
    started = time.monotonic()
    steps = [
        ["simulate", "--days", str(days + 1), "--users", str(users), "--start-date", start,
         "--quiet"],
        ["features", "--start", start, "--end", end],
        ["training-data", "--start", start, "--end", end],
        ["train", "--data", str(run), "--version", "curve", "--quiet"],
        ["evaluate", "--model", "curve", "--data", str(run)],
    ]  # fmt: skip
    for step in steps:
        if step[0] == "train" and (home / "models" / "curve" / "metadata.json").exists():
            continue  # a rerun of the curve reuses a point's model
        _run(step, env, log_path)
    metrics = json.loads((home / "reports" / "curve" / "metrics.json").read_text())
    manifest = json.loads((home / "lake" / "_manifest.json").read_text())
    row: dict[str, Any] = {
        "days": days,
        "users": users,
        "impressions": manifest["rows"]["impressions"],
        "validation_rows": metrics["rows"],
        "seconds": round(time.monotonic() - started, 1),
        "ndcg10": {k: metrics["ndcg10"].get(k) for k in ("model", "ceiling", "oracle")},
        "heads": {},
    }
    for head in HEADS:
        m = metrics["heads"][head]
        row["heads"][head] = {
            k: m.get(k)
            for k in (
                "rce",
                "no_pair_rce",
                "ceiling_rce",
                "oracle_rce",
                "calibration_decile_max_error",
                "oracle_calibration_decile_max_error",
                "calibration_decile_max_abs_z",
            )
        } | {"share_of_ceiling": m.get("rce_share_of_ceiling")}
    return row


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}"


def render_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per point, model RCE / ceiling RCE per head, NDCG@10, and the worst
    calibration decile per head in % (``–`` where a point's evaluation had none)."""
    lines = [
        "| days | users | impressions | "
        + " | ".join(f"{h} RCE / ceiling" for h in HEADS)
        + " | NDCG@10 model / ceiling | worst calibration decile % ("
        + " / ".join(HEADS)
        + ") |",
        "|---|---|---|" + "---|" * len(HEADS) + "---|---|",
    ]
    for row in rows:
        cells = [
            f"{_fmt(row['heads'][h]['rce'], 1)} / {_fmt(row['heads'][h]['ceiling_rce'], 1)} "
            f"({_fmt(row['heads'][h]['share_of_ceiling'], 2)})"
            for h in HEADS
        ]
        ndcg = row["ndcg10"]
        deciles = " / ".join(
            _pct(row["heads"][h].get("calibration_decile_max_error")) for h in HEADS
        )
        lines.append(
            f"| {row['days']} | {row['users']} | {row['impressions']:,} | "
            + " | ".join(cells)
            + f" | {_fmt(ndcg['model'], 3)} / {_fmt(ndcg['ceiling'], 3)} | {deciles} |"
        )
    return "\n".join(lines) + "\n"


# A line that reaches the goal only beyond this many impressions counts as not reaching it.
MAX_IMPRESSIONS_AT_GOAL = 1e12


def _crossing(slope: float, intercept: float, target: float) -> float | None:
    """ln(impressions) where ``intercept + slope·x`` reaches ``target`` (None if it does not
    within ``MAX_IMPRESSIONS_AT_GOAL``)."""
    if slope == 0:
        return None
    at = (target - intercept) / slope
    return at if at <= math.log(MAX_IMPRESSIONS_AT_GOAL) else None


def fit_days_axis(
    rows: list[dict[str, Any]], base_users: int, goal: float = GOAL_SHARE
) -> dict[str, dict[str, Any] | None]:
    """Per head, two least-squares lines (``numpy.polyfit``, degree 1) along the days axis.

    * ``log_linear``: share of the ceiling = a + b·ln(impressions);
    * ``power_gap``: ln(1 − share) = a + b·ln(impressions), the gap to the ceiling shrinking
      as a power of the data (it never crosses 1).

    Each gives the impressions at which the line reaches ``goal`` and the days of history
    that means at ``base_users`` users (impressions per simulated day from the axis's own
    points; a point of ``d`` days simulates ``d + 1``). ``None`` at-goal values: the line
    does not move toward the goal (or reaches it only beyond ``MAX_IMPRESSIONS_AT_GOAL``).
    A head with fewer than two points on the axis: ``None``.
    """
    axis = sorted((r for r in rows if r["users"] == base_users), key=lambda r: r["days"])
    per_day = sum(r["impressions"] for r in axis) / max(sum(r["days"] + 1 for r in axis), 1)
    out: dict[str, dict[str, Any] | None] = {}
    for head in HEADS:
        points = [
            (r["days"], r["impressions"], r["heads"][head]["share_of_ceiling"])
            for r in axis
            if r["heads"][head].get("share_of_ceiling") is not None
        ]
        if len(points) < 2:
            out[head] = None
            continue
        x = np.log([p[1] for p in points])
        share = np.array([p[2] for p in points])
        fits: dict[str, Any] = {"days": [p[0] for p in points]}
        for name, y, target, toward in (
            ("log_linear", share, goal, 1.0),
            ("power_gap", np.log(np.clip(1.0 - share, 1e-9, None)), math.log(1.0 - goal), -1.0),
        ):
            if name == "power_gap" and share.max() >= 1.0:
                fits[name] = None  # a point at or above the ceiling: no gap to fit
                continue
            slope, intercept = np.polyfit(x, y, 1)
            residual = float(np.max(np.abs(y - (intercept + slope * x))))
            at = _crossing(slope, intercept, target) if slope * toward > 0 else None
            impressions = math.exp(at) if at is not None else None
            fits[name] = {
                "slope": float(slope),
                "intercept": float(intercept),
                "max_abs_residual": residual,
                "impressions_at_goal": impressions,
                "days_at_goal": impressions / per_day - 1 if impressions is not None else None,
            }
        out[head] = fits
    return out


def render_fit(fit: dict[str, dict[str, Any] | None], goal: float = GOAL_SHARE) -> str:
    """Markdown: per head, both fitted lines and where each reaches ``goal``."""
    lines = [
        f"Fit along the days axis (numpy.polyfit, degree 1, x = ln impressions); where each "
        f"line reaches {goal:.2f} of the ceiling:",
        "",
        "| head | points (days) | share = a + b·ln N: b (max residual) | N at goal (days) "
        "| ln(1 − share) = a + b·ln N: b (max residual) | N at goal (days) |",
        "|---|---|---|---|---|---|",
    ]
    for head in HEADS:
        f = fit[head]
        if f is None:
            lines.append(f"| {head} | fewer than two points | | | | |")
            continue
        cells = []
        for name in ("log_linear", "power_gap"):
            g = f[name]
            if g is None:
                cells += ["a point at the ceiling", ""]
                continue
            at = (
                "not toward it (or > 10¹²)"
                if g["impressions_at_goal"] is None
                else f"{g['impressions_at_goal'] / 1e6:.2f} M ({g['days_at_goal']:.1f})"
            )
            cells += [f"{g['slope']:.3f} ({g['max_abs_residual']:.3f})", at]
        days = ", ".join(str(d) for d in f["days"])
        lines.append(f"| {head} | {days} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curve(rows: list[dict[str, Any]], path: Path, base_days: int, base_users: int) -> None:
    """Model RCE / ceiling RCE per head against logged impressions, one line per axis; the
    days axis's fitted lines (:func:`fit_days_axis`) dashed, up to the goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(HEADS), figsize=(4 * len(HEADS), 3.6), squeeze=False)
    axis_rows = {
        f"days of history ({base_users:,} users)": [r for r in rows if r["users"] == base_users],
        f"users ({base_days} days)": [r for r in rows if r["days"] == base_days],
    }
    fit = fit_days_axis(rows, base_users)
    for ax, head in zip(axes[0], HEADS, strict=True):
        _plot_fit(ax, fit[head], rows)
        for label, chosen in axis_rows.items():
            pts = sorted(
                (r["impressions"], r["heads"][head]["share_of_ceiling"], r)
                for r in chosen
                if r["heads"][head]["share_of_ceiling"] is not None
            )
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
            for x, y, r in pts:
                ax.annotate(f"{r['days']}d/{r['users']:,}", (x, y), fontsize=7)
        ax.axhline(1.0, color="k", linestyle=":", linewidth=0.8)
        ax.axhline(GOAL_SHARE, color="0.6", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_title(head)
        ax.set_xlabel("logged impressions")
        ax.set_ylabel("model RCE / ceiling RCE")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("learning curve: model RCE as a share of the knowable ceiling")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_fit(ax: Any, fit: dict[str, Any] | None, rows: list[dict[str, Any]]) -> None:
    if fit is None:
        return
    low = min(r["impressions"] for r in rows)
    high = max(r["impressions"] for r in rows)
    for name, style in (("log_linear", "--"), ("power_gap", "-.")):
        g = fit[name]
        if g is None:
            continue
        end = min(max(high, g["impressions_at_goal"] or high), 8 * high)
        x = np.geomspace(low, end, 50)
        y = g["intercept"] + g["slope"] * np.log(x)
        share = y if name == "log_linear" else 1.0 - np.exp(y)
        ax.plot(x, share, style, color="0.4", linewidth=0.8, label=f"fit: {name}")


def merge_rows(*row_lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (days, users), a later list's row replacing an earlier one's; sorted by
    users then days (the days axis first, then the users axis)."""
    merged = {(r["days"], r["users"]): r for rows in row_lists for r in rows}
    return [merged[k] for k in sorted(merged, key=lambda k: (k[1], k[0]))]


def quality_curve(
    out: Path,
    days: list[int],
    users: list[int],
    base_days: int,
    base_users: int,
    held_out: dt.date,
    earlier: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run the grid and write ``curve.json``, ``curve.md`` and ``curve.png`` into ``out``.

    Points already in ``earlier`` (rows of another run's ``curve.json``) are not rerun; the
    table, plot and ``curve.json`` hold the earlier rows and this run's together.
    """
    from rich.progress import Progress

    out.mkdir(parents=True, exist_ok=True)
    earlier = earlier or []
    known = {(r["days"], r["users"]) for r in earlier}
    rows: list[dict[str, Any]] = []
    points = [p for p in grid_points(days, users, base_days, base_users) if p not in known]
    with Progress() as progress:
        task = progress.add_task("quality curve", total=len(points))
        for d, u in points:
            progress.update(task, description=f"{d} days, {u:,} users")
            rows.append(run_point(out, d, u, held_out))
            # Written after every point, so an interrupted curve keeps what it measured.
            (out / "curve.json").write_text(json.dumps(merge_rows(earlier, rows), indent=2))
            progress.advance(task)
    rows = merge_rows(earlier, rows)
    (out / "curve.json").write_text(json.dumps(rows, indent=2))
    (out / "curve.md").write_text(
        render_table(rows) + "\n" + render_fit(fit_days_axis(rows, base_users))
    )
    plot_curve(rows, out / "curve.png", base_days, base_users)
    return rows


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{option} needs positive integers, got {text!r}")
    return values


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``feedrank quality-curve``."""

    @app.command("quality-curve")
    def quality_curve_command(
        days: str = typer.Option("2,4,8", help="Days of history (comma-separated)."),
        users: str = typer.Option("1000,2000,4000", help="Users (comma-separated)."),
        base_days: int = typer.Option(4, min=1, help="Days of history on the users axis."),
        base_users: int = typer.Option(1_000, min=10, help="Users on the days axis."),
        held_out: str = typer.Option(
            "2026-11-09", help="The held-out validation day of every point (YYYY-MM-DD)."
        ),
        out: Path = typer.Option(None, help="Output folder (default <reports>/quality-curve)."),
        merge: list[Path] | None = typer.Option(
            None,
            help="An earlier run's curve.json (repeatable): its points are not rerun and "
            "join this run's table and plot.",
        ),
    ) -> None:
        """Train and evaluate on growing data; table and plot of model / ceiling RCE."""
        day_list = _int_list(days, "--days")
        user_list = _int_list(users, "--users")
        if min([*user_list, base_users]) < 10:
            raise typer.BadParameter("--users: at least 10 users per point")
        try:
            held = dt.date.fromisoformat(held_out)
        except ValueError:
            raise typer.BadParameter(f"--held-out {held_out!r} is not YYYY-MM-DD") from None
        folder = out or get_settings().paths.reports / "quality-curve"
        earlier: list[dict[str, Any]] = []
        for path in merge or []:
            if not path.is_file():
                raise typer.BadParameter(f"--merge {path}: no such file")
            earlier = merge_rows(earlier, json.loads(path.read_text()))
        rows = quality_curve(folder, day_list, user_list, base_days, base_users, held, earlier)
        typer.echo(render_table(rows))
        typer.echo(render_fit(fit_days_axis(rows, base_users)))
        typer.echo(f"curve: {folder / 'curve.md'}, {folder / 'curve.png'}")
