"""``feedrank monitor``: the thin shell over :mod:`jobs.monitor` (heavy imports inside)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from feedrank.config import get_settings
from feedrank.errors import FeedrankError


def _worst(check: str, section: Mapping[str, Any]) -> str:
    """The most telling number of one check, for the summary table."""
    if check == "skew" and section.get("mismatch_rate"):
        rates = {k: v for k, v in section["mismatch_rate"].items() if v is not None}
        name = max(rates, key=rates.get)
        overall = section.get("overall_mismatch_share") or 0.0
        if not rates[name]:
            return f"no mismatches ({section['rows']} rows)"
        return f"{name} {rates[name]:.2%} (all cells {overall:.3%}, {section['rows']} rows)"
    if check == "drift" and section.get("psi"):
        values = {
            k: v for k, v in section["psi"].items() if v is not None and k not in section["exempt"]
        }
        if values:
            name = max(values, key=values.get)
            return f"{name} PSI {values[name]:.3f} ({section['rows']['served']} served rows)"
    if check == "auc" and section.get("heads"):
        parts = [
            f"{h} {s['roc_auc']:.3f}"
            for h, s in section["heads"].items()
            if s["roc_auc"] is not None
        ]
        return ", ".join(parts) + f" ({section['rows']} rows)"
    return ""


def print_summary(report: Mapping[str, Any], path: Path) -> None:
    """A short rich table: one line per check with its status and worst value."""
    from rich.console import Console
    from rich.table import Table

    from jobs.monitor import CHECKS

    table = Table(title=f"monitoring {report['date']}")
    for column in ("check", "status", "threshold", "worst / values"):
        table.add_column(column)
    for check in CHECKS:
        section = report[check]
        status = str(section.get("status", ""))
        style = "red" if status == "breach" else ("green" if status == "ok" else "yellow")
        table.add_row(
            check,
            f"[{style}]{status}[/{style}]",
            str(section.get("threshold", "")),
            _worst(check, section),
        )
    Console().print(table)
    # Plain, never wrapped: scripts (the retrain DAG's monitor task) read the path from it.
    typer.echo(f"report: {path}")


def monitor_command(
    date: Annotated[str, typer.Option("--date", help="Served date to check, YYYY-MM-DD (UTC).")],
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the report here (always: reports/monitoring/)."),
    ] = None,
    training_run: Annotated[
        Path | None,
        typer.Option(help="Training run folder for drift; default: the served model's own run."),
    ] = None,
) -> None:
    """Skew, drift and live AUC of the impressions served on DATE; exit 1 on a breach."""
    from feedrank import lake
    from feedrank.logs import setup_logging
    from feedrank.spark import get_spark
    from jobs import monitor

    day = lake.parse_date(date, "--date")
    settings = get_settings()
    setup_logging("monitor", settings)
    report, path = monitor.run_monitor(
        lambda: get_spark("feedrank-monitor", settings), settings, day, training_run, json_path
    )
    print_summary(report, path)
    if not report["ok"]:
        raise FeedrankError(
            f"monitoring breached for {day}: {'; '.join(report['breaches'])}; report {path}"
        )


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``monitor`` to the ``feedrank`` command."""
    del bench_app  # nothing to benchmark: the checks are batch jobs over one date
    app.command("monitor")(monitor_command)
