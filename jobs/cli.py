"""``feedrank land | validate | features | training-data`` and ``feedrank bench training-data``.

Thin shells over the pure jobs: parse explicit dates (a bad one is a one-line error), start
the one SparkSession, run, print where the output went. Heavy imports stay inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from feedrank.config import get_settings
from feedrank.feature_spec import TRAINING_MANIFEST
from feedrank.logs import setup_logging

StartOpt = Annotated[str, typer.Option("--start", help="First date, YYYY-MM-DD (UTC).")]
EndOpt = Annotated[str, typer.Option("--end", help="Last date, YYYY-MM-DD (UTC), inclusive.")]


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add the batch-pipeline commands to the ``feedrank`` app."""

    @app.command("features")
    def features_cmd(
        start: StartOpt,
        end: EndOpt,
        view: Annotated[
            list[str] | None,
            typer.Option("--view", help="Only this feature view (repeatable); default: all."),
        ] = None,
    ) -> None:
        """Compute feature-table snapshots from START to END (inclusive) from the lake."""
        from feedrank import lake
        from feedrank.spark import get_spark
        from jobs import features

        first, last = lake.parse_date(start, "--start"), lake.parse_date(end, "--end")
        lake.check_interval(first, last)
        settings = get_settings()
        setup_logging("features", settings)
        written = features.run_features(
            get_spark("feedrank-features", settings), settings, first, last, view
        )
        for name, parts in written.items():
            typer.echo(f"{name}: {len(parts)} partition(s) in {settings.paths.features / name}")

    @app.command("training-data")
    def training_data_cmd(
        start: StartOpt,
        end: EndOpt,
        run_id: Annotated[
            str | None, typer.Option(help="Run folder name; default START_END (reruns replace it).")
        ] = None,
    ) -> None:
        """Build point-in-time-correct training examples of impressions from START to END."""
        from feedrank import lake
        from feedrank.spark import get_spark
        from jobs import training_data

        first, last = lake.parse_date(start, "--start"), lake.parse_date(end, "--end")
        lake.check_interval(first, last)
        settings = get_settings()
        setup_logging("training-data", settings)
        run = training_data.run_training_data(
            get_spark("feedrank-training-data", settings), settings, first, last, run_id
        )
        typer.echo(f"training examples: {run} (manifest {run / TRAINING_MANIFEST})")

    @app.command("validate")
    def validate_cmd(
        date: Annotated[
            list[str],
            typer.Option("--date", help="Partition date, YYYY-MM-DD (repeatable: each in turn)."),
        ],
        features: Annotated[
            bool,
            typer.Option(
                "--features",
                help="Check the feature tables (after `feedrank features`) instead of the lake.",
            ),
        ] = False,
    ) -> None:
        """Check DATE's landed lake tables (or, with --features, its feature tables) against
        the day before; fail on a threshold breach."""
        from feedrank import lake
        from jobs import validate

        days = [lake.parse_date(d, "--date") for d in date]
        settings = get_settings()
        setup_logging("validate", settings)
        kind = "features" if features else "lake"
        for day in days:
            path = validate.gate(settings, day, kind=kind)
            typer.echo(f"validation passed for {day} ({kind}): {path}")

    @app.command("land")
    def land_cmd(
        topic: Annotated[
            list[str] | None,
            typer.Option("--topic", help="Topic to land (repeatable); default: every lake topic."),
        ] = None,
        batch_records: Annotated[
            int, typer.Option(min=1, help="Most Kafka records per micro-batch.")
        ] = 200_000,
    ) -> None:
        """Land everything new on the Kafka topics into the lake (exactly once per record)."""
        from feedrank.spark import get_spark
        from jobs import land

        settings = get_settings()
        setup_logging("land", settings)
        summary = land.land(
            get_spark("feedrank-land", settings), settings, topic, batch_records=batch_records
        )
        for name, counts in summary.items():
            typer.echo(
                f"{name}: {counts['rows']} row(s) landed, {counts['quarantined']} quarantined"
            )

    @bench_app.command("training-data")
    def bench_training_data_cmd(
        rows: Annotated[int, typer.Option(min=1000, help="Impressions to join.")] = 1_000_000,
        json_path: Annotated[
            Path | None, typer.Option("--json", help="Write results here.")
        ] = None,
        feast_max_rows: Annotated[
            int, typer.Option(help="Skip Feast above this many rows (it is ~30x slower).")
        ] = 1_000_000,
    ) -> None:
        """Point-in-time joins: Spark vs Feast's file offline store vs DuckDB ASOF JOIN."""
        from jobs.training_data_bench import bench_training_data

        settings = get_settings()
        setup_logging("bench", settings)
        result = bench_training_data(settings, rows, json_path, feast_max_rows)
        for key, value in result.items():
            typer.echo(f"{key:>18}: {value}")
