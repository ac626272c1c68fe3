"""``feedrank experiment report``, and the experiment tables ``feedrank demo`` prints too."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from feedrank.config import get_settings
from feedrank.experiment_analysis import report_from_lake


def print_online_comparison(report: dict, counterfactual: dict | None) -> None:
    """Realized lift per arm beside the paired counterfactual lift per policy."""
    from rich.console import Console
    from rich.table import Table

    arm_of_policy = {"chronological": report["control"], "champion": "treatment"}
    arm_of_policy["oracle"] = "oracle"
    table = Table(
        title=f"online comparison vs chronological ({int(report['confidence'] * 100)}% "
        "intervals): realized outcomes per arm | paired counterfactual on the same requests"
    )
    for col in ("policy", "realized lift (arm)", "counterfactual lift", "share of oracle lift"):
        table.add_column(col)
    names = list(counterfactual or {}) or list(arm_of_policy)
    for name in names:
        realized = ""
        entry = report["arms"].get(arm_of_policy.get(name, ""), {})
        if name == "chronological":
            realized = f"control, {entry.get('sessions', 0)} sessions"
        elif "weighted_engagements" in entry:
            lift = entry["weighted_engagements"]["lift_vs_control"]
            realized = (
                f"{100 * lift['estimate']:+.1f}% [{100 * lift['low']:+.1f}, "
                f"{100 * lift['high']:+.1f}] ({entry['sessions']} sessions)"
            )
        cf, share = "", ""
        if counterfactual and name in counterfactual:
            c = counterfactual[name]
            cf = f"{c['lift_pct']:+.1f}% [{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]"
            share = (
                f"{100 * c['share_of_oracle']:.1f}% [{100 * c['share_ci_low']:.1f}, "
                f"{100 * c['share_ci_high']:.1f}]"
            )
        table.add_row(name, realized, cf, share)
    Console().print(table)
    if counterfactual:
        first = next(iter(counterfactual.values()))
        n, units = first["requests"], first.get("units", first["requests"])
        Console().print(
            f"counterfactual: {n} requests from {units} users (intervals resample users), "
            "every policy ranked each one; expected weighted engagements under the true "
            "probabilities at the positions served"
            if units != n
            else f"counterfactual: {n} requests, every policy ranked each one; expected "
            "weighted engagements under the true probabilities at the positions served"
        )


def print_report(report: dict) -> None:
    """A rich table: one row per arm, weighted engagements and negatives with intervals."""
    from rich.console import Console
    from rich.table import Table

    def fmt(interval: dict, pct: bool = False) -> str:
        scale, unit = (100.0, "%") if pct else (1.0, "")
        e, lo, hi = (interval[k] * scale for k in ("estimate", "low", "high"))
        return f"{e:+.2f}{unit} [{lo:+.2f}, {hi:+.2f}]" if pct else f"{e:.3f} [{lo:.3f}, {hi:.3f}]"

    table = Table(title=f"online experiment ({int(report['confidence'] * 100)}% intervals)")
    for col in ("arm", "sessions", "weighted eng./session", "lift vs control", "neg./session"):
        table.add_column(col)
    for arm, entry in report["arms"].items():
        if "weighted_engagements" not in entry:
            table.add_row(arm, str(entry["sessions"]), "too few sessions", "", "")
            continue
        weighted = entry["weighted_engagements"]
        table.add_row(
            arm,
            str(entry["sessions"]),
            fmt(weighted["mean"]),
            "" if arm == report["control"] else fmt(weighted["lift_vs_control"], pct=True),
            fmt(entry["negative_actions"]["mean"]),
        )
    Console().print(table)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``feedrank experiment report``."""
    experiment_app = typer.Typer(
        help="Online experiment: arms, lift, intervals.", no_args_is_help=True
    )
    app.add_typer(experiment_app, name="experiment")

    @experiment_app.command("report")
    def report_command(
        start: str = typer.Option(..., help="First day (YYYY-MM-DD) of landed traffic."),
        end: str = typer.Option(None, help="Last day, inclusive (default: start)."),
        json_path: Path = typer.Option(None, "--json", help="Also write the report here."),
    ) -> None:
        """Per-arm weighted engagements and negative actions per session, lift vs control."""
        from feedrank.lake import check_interval, days_between, parse_date

        settings = get_settings()
        first = parse_date(start, "--start")
        last = parse_date(end, "--end") if end else first
        check_interval(first, last)
        dates = [d.isoformat() for d in days_between(first, last)]
        report = report_from_lake(settings.paths.lake, dates, settings.ranking.weights)
        out = json_path or settings.paths.reports / "experiment" / f"{dates[0]}_{dates[-1]}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print_report(report)
        typer.echo(f"report: {out}")
