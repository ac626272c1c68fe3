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
        rebuild: Annotated[
            bool,
            typer.Option(
                "--rebuild",
                help="Recompute every day, even those whose partitions were written from the "
                "same lake days by the same code (kept by default).",
            ),
        ] = False,
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
            get_spark("feedrank-features", settings), settings, first, last, view, not rebuild
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
        rows: Annotated[
            list[int] | None,
            typer.Option(
                min=1000,
                help="Impressions to join (repeatable: one point of the curve per size); "
                "default 1000000.",
            ),
        ] = None,
        json_path: Annotated[
            Path | None,
            typer.Option(
                "--json", help="Write results here (default: <reports>/bench-training-data.json)."
            ),
        ] = None,
        png_path: Annotated[
            Path | None,
            typer.Option("--png", help="Plot the curve here (default: the JSON path, .png)."),
        ] = None,
        feast_max_rows: Annotated[
            int,
            typer.Option(help="Feast above this many rows is extrapolated (it is slower)."),
        ] = 1_000_000,
        repeat: Annotated[
            int,
            typer.Option(
                min=1,
                help="Runs of each engine per size; the fastest counts (the others are in "
                "the JSON's runs_s).",
            ),
        ] = 1,
        master: Annotated[
            str | None,
            typer.Option(
                "--master",
                help="Spark master of the Spark engine (default: spark.master), e.g. local[2] "
                "or the spark://127.0.0.1:PORT of `FEEDRANK_PROFILE=cluster make up`.",
            ),
        ] = None,
    ) -> None:
        """Point-in-time joins: Spark vs Feast's file offline store vs DuckDB ASOF JOIN."""
        from jobs.training_data_bench import bench_training_data

        settings = get_settings()
        if master:
            spark = settings.spark.model_copy(update={"master": master})
            settings = settings.model_copy(update={"spark": spark})
        setup_logging("bench", settings)
        json_path = json_path or settings.paths.reports / "bench-training-data.json"
        png_path = png_path or json_path.with_suffix(".png")
        result = bench_training_data(
            settings, rows or [1_000_000], json_path, png_path, feast_max_rows, repeat
        )
        typer.echo(
            f"{'rows':>11} {'engine':>7} {'s':>8} {'cpu_s':>8} {'rows/core-s':>12} {'MB':>7}"
        )
        for point in result["points"]:
            for engine, f in point["engines"].items():
                if "error" in f:
                    typer.echo(f"{point['rows']:>11} {engine:>7} failed: {f['error']}")
                    continue
                mark = " (extrapolated)" if f.get("extrapolated") else ""
                typer.echo(
                    f"{point['rows']:>11} {engine:>7} {f['s']:>8.2f} {f['cpu_s']:>8.2f} "
                    f"{f['rows_per_core_s']:>12} {f['peak_rss_mb']:>7.0f}{mark}"
                )
            typer.echo(
                f"{'':>11} spark/duckdb per core {point['spark_vs_duckdb_per_core']}, "
                f"spark/feast {point['spark_vs_feast_per_core']}, "
                f"load average {point['load_avg_1m']}"
            )
        typer.echo(f"goals: {result['goals']}")
        typer.echo(f"curve: {json_path} and {png_path}")
