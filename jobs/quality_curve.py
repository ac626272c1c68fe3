"""``feedrank quality-curve``: model RCE against the knowable ceiling as the data grows.

Each point of the grid is a fresh run folder under ``--out`` (its own lake, features,
training data, model and report): simulate ``days + 1`` days ending with the same held-out
day, build features and point-in-time training data over them, train, evaluate. Everything
but the days of history and the number of users is the configuration's (seed, topics,
author share, ``FEEDRANK_SIMULATOR__*``), so the curve says whether the gap to the
``ceiling`` closes with data (a data gap) or stays (a model gap).

Writes ``curve.json``, ``curve.md`` (the table) and ``curve.png`` (model RCE / ceiling RCE
per head against training impressions) into ``--out``; ``--merge`` takes an earlier run's
``curve.json``, whose points are not rerun and join the table and plot. Not part of
``make test``: each point runs the whole batch pipeline.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from feedrank.config import HEADS, get_settings
from feedrank.errors import FeedrankError

log = logging.getLogger("feedrank.quality_curve")

DEFAULT_DAYS = (2, 4, 8)
DEFAULT_USERS = (1_000, 2_000, 4_000)


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
            k: m.get(k) for k in ("rce", "no_pair_rce", "ceiling_rce", "oracle_rce")
        } | {"share_of_ceiling": m.get("rce_share_of_ceiling")}
    return row


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per point, model RCE / ceiling RCE per head."""
    lines = [
        "| days | users | impressions | "
        + " | ".join(f"{h} RCE / ceiling" for h in HEADS)
        + " | NDCG@10 model / ceiling |",
        "|---|---|---|" + "---|" * len(HEADS) + "---|",
    ]
    for row in rows:
        cells = [
            f"{_fmt(row['heads'][h]['rce'], 1)} / {_fmt(row['heads'][h]['ceiling_rce'], 1)} "
            f"({_fmt(row['heads'][h]['share_of_ceiling'], 2)})"
            for h in HEADS
        ]
        ndcg = row["ndcg10"]
        lines.append(
            f"| {row['days']} | {row['users']} | {row['impressions']:,} | "
            + " | ".join(cells)
            + f" | {_fmt(ndcg['model'], 3)} / {_fmt(ndcg['ceiling'], 3)} |"
        )
    return "\n".join(lines) + "\n"


def plot_curve(rows: list[dict[str, Any]], path: Path, base_days: int, base_users: int) -> None:
    """Model RCE / ceiling RCE per head against logged impressions, one line per axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(HEADS), figsize=(4 * len(HEADS), 3.6), squeeze=False)
    axis_rows = {
        f"days of history ({base_users:,} users)": [r for r in rows if r["users"] == base_users],
        f"users ({base_days} days)": [r for r in rows if r["days"] == base_days],
    }
    for ax, head in zip(axes[0], HEADS, strict=True):
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
        ax.set_xscale("log")
        ax.set_title(head)
        ax.set_xlabel("logged impressions")
        ax.set_ylabel("model RCE / ceiling RCE")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("learning curve: model RCE as a share of the knowable ceiling")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    (out / "curve.md").write_text(render_table(rows))
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
        typer.echo(f"curve: {folder / 'curve.md'}, {folder / 'curve.png'}")
