"""``feedrank feast-apply``, ``feast-yaml``, ``materialize``, ``stream-features`` and
``bench hydration``: the feature store's commands (entry points, top layer)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from feedrank.config import get_settings
from feedrank.featurestore import (
    apply_repo,
    as_utc,
    materialize,
    store_dir,
    write_feature_store_yaml,
)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``feast-apply``, ``feast-yaml``, ``materialize``, ``stream-features`` and
    ``bench hydration``."""
    import typer

    date_formats = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"]

    @app.command("feast-apply")
    def feast_apply_command() -> None:
        """Register feature_repo/ in the profile's Feast store (same as `feast apply`)."""
        from feedrank.logs import setup_logging

        settings = get_settings()
        log = setup_logging("feast-apply", settings)
        apply_repo(settings, quiet=False)
        log.info("applied feature_repo to %s", store_dir(settings))
        typer.echo(
            f"applied feature_repo/ ({settings.feast.online_store} online, "
            f"{settings.feast.offline_store} offline) -> {store_dir(settings)}"
        )

    @app.command("feast-yaml")
    def feast_yaml_command() -> None:
        """Write the profile's resolved feature_store.yaml to the run folder; print its path.

        Then: feast -c feature_repo -f "$(feedrank feast-yaml)" plan
        """
        typer.echo(str(write_feature_store_yaml(get_settings())))

    @app.command("materialize")
    def materialize_command(
        end: dt.datetime = typer.Option(
            ..., "--end", formats=date_formats, help="End of the window (UTC)."
        ),
        start: dt.datetime | None = typer.Option(
            None,
            "--start",
            formats=date_formats,
            help="Start of the window (UTC); omitted: continue from the last run.",
        ),
        view: list[str] | None = typer.Option(None, "--view", help="Only these views."),
        with_stream_views: bool = typer.Option(
            False, "--with-stream-views", help="Also backfill the pushed real-time views."
        ),
    ) -> None:
        """Materialize offline feature tables into the online store (idempotent)."""
        from feedrank.logs import setup_logging

        settings = get_settings()
        log = setup_logging("materialize", settings)
        names = materialize(
            settings, start=start, end=end, views=view, include_stream_views=with_stream_views
        )
        log.info("materialized %s up to %s", names, end)
        typer.echo(f"materialized {len(names)} views up to {as_utc(end).isoformat()}")

    @app.command("stream-features")
    def stream_features_command(
        max_messages: int | None = typer.Option(None, min=1, help="Stop after this many."),
        idle_timeout_s: float | None = typer.Option(
            None, min=0.1, help="Stop after this long without messages (default: never)."
        ),
    ) -> None:
        """Engagements topic -> 30 min / 1 h counters -> Feast push (at-least-once)."""
        from feedrank.exporter import start_metrics_server
        from feedrank.logs import setup_logging
        from feedrank.readiness import check_kafka_login
        from jobs.stream_features import run_stream_features

        settings = get_settings()
        check_kafka_login(settings, "stream-features")
        log = setup_logging("stream-features", settings)
        obs = settings.observability
        try:
            start_metrics_server(obs.stream_features_port, obs.metrics_host)
        except OSError as exc:  # the job matters more than its metrics
            log.warning("no /metrics on %s:%d: %s", obs.metrics_host, obs.stream_features_port, exc)
        stats = run_stream_features(
            settings, max_messages=max_messages, idle_timeout_s=idle_timeout_s, progress=True
        )
        typer.echo(stats.summary())

    @bench_app.command("hydration")
    def bench_hydration_command(
        candidates: int = typer.Option(1000, min=1, help="Candidate tweets per request."),
        requests: int = typer.Option(200, min=10, help="Timed requests per path."),
        json_path: Path | None = typer.Option(None, "--json", help="Write results here."),
    ) -> None:
        """p50/p99 of feature hydration: Feast SQLite, Feast Redis and the fast path."""
        from serving.hydration_bench import run_bench

        run_bench(get_settings(), candidates=candidates, requests=requests, json_path=json_path)
