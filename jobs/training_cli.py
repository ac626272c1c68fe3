"""``feedrank train``, ``feedrank evaluate``, ``feedrank promote`` and ``feedrank models``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from feedrank.config import get_settings


def train_command(
    data: Annotated[
        str | None,
        typer.Option(help="Training-data run (directory or run id); default: latest by date."),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Model version name (default: UTC timestamp).")
    ] = None,
    distributed: Annotated[
        bool | None,
        typer.Option(
            "--distributed/--single-node",
            help="Train with xgboost.spark on the configured Spark master "
            "(default: on with the cluster profile).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Train the XGBoost heads and the light ranker; save a registry version."""
    from feedrank.logs import setup_logging
    from jobs.train import train

    settings = get_settings()
    setup_logging("train", settings)
    result = train(
        settings, data=data, version=version, distributed=distributed, show_progress=not quiet
    )
    typer.echo(
        json.dumps(
            {
                "version": result.version,
                "path": str(result.path),
                "trainer": result.trainer,
                "seconds": round(result.seconds, 1),
                "trees": {h: r.best_iteration + 1 for h, r in result.heads.items()},
                "validation_logloss_downsampled": {
                    h: round(r.validation_logloss, 5) for h, r in result.heads.items()
                },
            },
            indent=2,
        )
    )


def evaluate_command(
    model: Annotated[str, typer.Option(help="Model version, 'champion' or a model directory.")],
    data: Annotated[
        str | None,
        typer.Option(help="Training-data run to evaluate on (default: the model's own run)."),
    ] = None,
    lake: Annotated[
        Path | None, typer.Option(help="Lake holding the oracle table (default <home>/lake).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default <home>/reports/<version>).")
    ] = None,
) -> None:
    """Score a model against chronological, popularity, light-ranker and oracle orders."""
    from feedrank.logs import setup_logging
    from jobs.evaluate import evaluate

    settings = get_settings()
    setup_logging("evaluate", settings)
    metrics, report = evaluate(settings, model, data=data, lake_root=lake, out_dir=out)
    typer.echo(
        json.dumps(
            {
                "version": metrics["version"],
                "report": str(report),
                "heads": {
                    h: {k: m[k] for k in ("auc", "rce", "oracle_rce", "calibration")}
                    for h, m in metrics["heads"].items()
                },
                "ndcg10": metrics["ndcg10"],
            },
            indent=2,
        )
    )


def promote_command(
    version: Annotated[str, typer.Option(help="The challenger's model version.")],
    data: Annotated[
        str | None,
        typer.Option(help="Held-out run both models are scored on (default: challenger's)."),
    ] = None,
    lake: Annotated[
        Path | None, typer.Option(help="Lake holding the oracle table (default <home>/lake).")
    ] = None,
) -> None:
    """Make VERSION the champion if it passes the sanity checks and beats or ties the champion."""
    from feedrank.logs import setup_logging
    from jobs.evaluate_gate import promote

    settings = get_settings()
    setup_logging("promote", settings)
    decision = promote(settings, version, data=data, lake_root=lake)
    typer.echo(json.dumps(decision, indent=2))


def models_command() -> None:
    """List model versions and the champion."""
    from feedrank import registry

    settings = get_settings()
    typer.echo(
        json.dumps(
            {
                "champion": registry.champion_version(settings),
                "versions": registry.list_versions(settings),
            },
            indent=2,
        )
    )


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``train``, ``evaluate``, ``promote`` and ``models`` to the ``feedrank`` command."""
    del bench_app  # no benchmark of its own: training time is reported by `train`
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("promote")(promote_command)
    app.command("models")(models_command)
