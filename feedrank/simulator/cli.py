"""``feedrank simulate`` (batch backfill or live Kafka stream) and ``feedrank bench simulate``."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from feedrank.config import get_settings
from feedrank.errors import FeedrankError


def simulate(
    days: Annotated[int | None, typer.Option(min=1, help="Simulated days (backfill).")] = None,
    seed: Annotated[int | None, typer.Option(help="World seed (default from config).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Lake folder to write (default <home>/lake).")
    ] = None,
    users: Annotated[int | None, typer.Option(min=10, help="Number of users.")] = None,
    candidates: Annotated[
        int | None, typer.Option(min=10, max=5000, help="Candidates per request (backfill).")
    ] = None,
    start_date: Annotated[
        str | None, typer.Option(help="First simulated day, YYYY-MM-DD (backfill).")
    ] = None,
    live: Annotated[bool, typer.Option("--live", help="Stream events to Kafka instead.")] = False,
    rate: Annotated[
        float | None, typer.Option(min=0.01, help="Live feed requests per second.")
    ] = None,
    duration: Annotated[float, typer.Option(min=0.1, help="Live run length in seconds.")] = 60.0,
    closed_loop: Annotated[
        bool, typer.Option("--closed-loop", help="Engage with the feeds served (live).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Simulate the old chronological system: Parquet backfill, or a live Kafka stream."""
    from feedrank.logs import setup_logging

    settings = get_settings()
    if live:
        if any(v is not None for v in (days, out, candidates, start_date)):
            raise FeedrankError(
                "--days/--out/--candidates/--start-date apply to backfills, not --live"
            )
        from feedrank.simulator.live import run_live

        setup_logging("simulator-live", settings)
        stats = run_live(
            settings,
            rate_rps=rate if rate is not None else settings.simulator.live_rate_rps,
            duration_s=duration,
            closed_loop=closed_loop,
            seed=seed,
            users=users,
            progress=not quiet,
        )
        typer.echo(json.dumps(stats.as_dict(), indent=2, sort_keys=True))
        return
    if rate is not None or closed_loop:
        raise FeedrankError("--rate/--closed-loop need --live")
    if start_date is not None:
        try:
            dt.date.fromisoformat(start_date)
        except ValueError:
            raise FeedrankError(f"--start-date {start_date!r} is not YYYY-MM-DD") from None
    from feedrank.simulator.backfill import simulate_backfill

    setup_logging("simulator", settings)
    summary = simulate_backfill(
        settings,
        out or settings.paths.lake,
        days=days,
        seed=seed,
        users=users,
        candidates=candidates,
        start_date=start_date,
        progress=not quiet,
    )
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))


def bench_simulate(
    users: Annotated[int, typer.Option(min=10, help="Users (2,000 ≈ 0.9M impressions).")] = 2000,
    days: Annotated[int, typer.Option(min=1, help="Simulated days.")] = 4,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Batch generation speed: rows and impressions per second of a backfill to a temp dir."""
    from rich.console import Console
    from rich.table import Table

    from feedrank.simulator.backfill import simulate_backfill

    settings = get_settings()
    with tempfile.TemporaryDirectory(
        dir=settings.paths.home if settings.paths.home.is_dir() else None
    ) as tmp:
        summary = simulate_backfill(settings, Path(tmp), days=days, users=users, progress=True)
    result = {
        "users": users,
        "days": days,
        "impressions": summary["rows"]["impressions"],
        "rows_total": sum(summary["rows"].values()),
        "seconds": summary["total_s"],
        "cpu_s": summary["cpu_s"],
        "rows_per_s": round(summary["rows_per_s"]),
        "impressions_per_s": round(summary["impressions_per_s"]),
    }
    table = Table(title="feedrank bench simulate (backfill, incl. Parquet writes)")
    for key in result:
        table.add_column(key, justify="right")
    table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in result.values()))
    Console(width=160).print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``simulate`` and ``bench simulate`` to the ``feedrank`` command."""
    app.command("simulate")(simulate)
    bench_app.command("simulate")(bench_simulate)
