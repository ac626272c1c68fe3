"""``feedrank train``, ``evaluate``, ``promote``, ``models`` and ``mlflow-ui``."""

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
    """Train the XGBoost heads and the light ranker; save the model, log an MLflow run."""
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
                "mlflow_run_id": result.mlflow_run_id,
                "trees": {h: r.best_iteration + 1 for h, r in result.heads.items()},
                "selection_logloss_downsampled": {
                    h: round(r.selection_logloss, 5) for h, r in result.heads.items()
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
                "mlflow_run_id": metrics["mlflow_run_id"],
            },
            indent=2,
        )
    )


def promote_command(
    version: Annotated[
        str | None, typer.Option(help="The challenger's model version (not with --rollback).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Held-out run both models are scored on (default: challenger's)."),
    ] = None,
    lake: Annotated[
        Path | None, typer.Option(help="Lake holding the oracle table (default <home>/lake).")
    ] = None,
    rollback: Annotated[
        bool,
        typer.Option(
            "--rollback", help="Move the champion alias back to the champion it replaced."
        ),
    ] = False,
) -> None:
    """Make VERSION the champion if it passes the gate; or --rollback to the previous one."""
    from feedrank.logs import setup_logging
    from jobs import evaluate_gate

    if rollback and (version or data or lake):
        raise typer.BadParameter("--rollback takes no --version, --data or --lake")
    if not rollback and not version:
        raise typer.BadParameter("give --version VERSION (the challenger) or --rollback")
    settings = get_settings()
    setup_logging("promote", settings)
    if rollback:
        decision = evaluate_gate.rollback(settings)
    else:
        assert version is not None
        decision = evaluate_gate.promote(settings, version, data=data, lake_root=lake)
    typer.echo(json.dumps(decision, indent=2))


def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """List the registered model versions, their key metrics, and which one is champion."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from feedrank import tracking

    settings = get_settings()
    rows = tracking.list_versions(settings)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    table = Table(title=f"{settings.mlflow.model_name} in {tracking.tracking_uri(settings)}")
    for column in ("", "version", "model", "previous", *tracking.KEY_METRICS, "run"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            "champion" if r.champion else "",
            r.version,
            r.feedrank_version or "?",
            r.previous_champion or "",
            *(f"{r.metrics[k]:.4f}" if k in r.metrics else "" for k in tracking.KEY_METRICS),
            r.run_id or "",
        )
    Console(width=200).print(table if rows else "no registered model version yet")


def mlflow_ui_command() -> None:
    """Browse the MLflow store (runs, metrics, plots, registered versions) on 127.0.0.1."""
    import os
    import shutil
    import sys

    from feedrank import tracking

    settings = get_settings()
    if settings.mlflow.tracking_uri:
        typer.echo(f"the store is a shared server: browse {settings.mlflow.tracking_uri}")
        return
    tracking.client(settings)  # creates the store on first use; the env below is set
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    argv = [
        mlflow,
        "ui",
        "--backend-store-uri",
        tracking.tracking_uri(settings),
        "--default-artifact-root",
        str(tracking.artifact_root(settings)),
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.mlflow.ui_port),
        "--workers",
        "1",
    ]
    typer.echo(f"MLflow UI on http://127.0.0.1:{settings.mlflow.ui_port} (Ctrl-C stops it)")
    os.execv(mlflow, argv)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``train``, ``evaluate``, ``promote``, ``models``, ``mlflow-ui`` to ``feedrank``."""
    del bench_app  # no benchmark of its own: training time is reported by `train`
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("promote")(promote_command)
    app.command("models")(models_command)
    app.command("mlflow-ui")(mlflow_ui_command)
