"""``feedrank serve``, ``feedrank bench serving`` and ``feedrank bench funnel``."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from feedrank.config import get_settings


def serve(
    max_requests: Annotated[
        int | None,
        typer.Option(min=1, help="Stop after this many messages (default: run until signalled)."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="/metrics port (default serving.metrics_port; 0: off)."
        ),
    ] = None,
) -> None:
    """Rescore feed requests from Kafka with the champion model (one consumer-group member)."""
    from feedrank.readiness import check_kafka_login
    from serving.consumer import run_serving

    settings = get_settings()
    check_kafka_login(settings, "serve")
    if metrics_port is not None:
        serving = settings.serving.model_copy(update={"metrics_port": metrics_port})
        settings = settings.model_copy(update={"serving": serving})
    stop = threading.Event()
    # SIGTERM/SIGINT finish the current batch (outputs acknowledged, offsets committed).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stats = run_serving(settings, max_requests=max_requests, stop_event=stop)
    typer.echo(json.dumps(stats.as_dict()))


def bench_serving(
    candidates: Annotated[
        int, typer.Option(min=1, max=5000, help="Candidates per request.")
    ] = 1000,
    rate: Annotated[float, typer.Option(min=0.1, max=500.0, help="Requests per second.")] = 50.0,
    duration: Annotated[float, typer.Option(min=1.0, max=600.0, help="Seconds of load.")] = 20.0,
    naive_requests: Annotated[
        int, typer.Option(min=1, max=200, help="Requests timed through the naive path.")
    ] = 10,
    servers: Annotated[
        int, typer.Option(min=1, max=8, help="feedrank serve processes in the group.")
    ] = 2,
    warmup: Annotated[
        float, typer.Option(min=0.0, max=120.0, help="Seconds of unmeasured load first.")
    ] = 5.0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures here.")
    ] = None,
    curve: Annotated[
        str,
        typer.Option(
            help="Load curve: comma-separated rates, each loaded for --duration after --rate "
            "(e.g. 25,50,100,150,200); empty: none."
        ),
    ] = "",
    plot: Annotated[
        Path | None, typer.Option(help="Draw the load curve (needs --curve) into this PNG.")
    ] = None,
) -> None:
    """End-to-end serving latency on the real broker, against the naive path and model floor."""
    from serving.latency_bench import plot_curve, print_table, run_bench

    try:
        rates = tuple(float(r) for r in curve.split(",") if r.strip())
    except ValueError:
        raise typer.BadParameter(f"--curve takes rates like 25,50,100, not {curve!r}") from None
    if plot is not None and not rates:
        raise typer.BadParameter("--plot draws the load curve: give --curve too")

    figures = run_bench(
        get_settings(),
        candidates=candidates,
        rate_rps=rate,
        duration_s=duration,
        naive_requests=naive_requests,
        servers=servers,
        warmup_s=warmup,
        curve_rates=rates,
    )
    print_table(figures)
    if plot is not None:
        plot_curve(figures, plot)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=2) + "\n")


def bench_funnel(
    requests: Annotated[
        int, typer.Option(min=1, max=5000, help="Requests drawn from the run folder's world.")
    ] = 200,
    caps: Annotated[
        str, typer.Option(help="Comma-separated heavy-ranker caps to compare.")
    ] = "100,200,300,400,600,1000",
    model: Annotated[str, typer.Option(help="Model version (default: the champion).")] = (
        "champion"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the requests drawn.")] = 24,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures here.")
    ] = None,
) -> None:
    """Ranking quality of the funnel's cut (heavy_ranker_cap) against the simulator's truth.

    Needs the run folder's simulated world and model (after `make demo`); without a world it
    says so and measures nothing (exit 0, so `make bench` carries on).
    """
    from serving.funnel_bench import missing_world, print_table, run_bench, write_json

    settings = get_settings()
    reason = missing_world(settings)
    if reason is not None:
        typer.echo(f"bench funnel skipped: {reason}", err=True)
        if json_path is not None:
            write_json({"bench": "funnel", "skipped": reason}, json_path)
        return
    try:
        cap_list = [int(c) for c in caps.split(",") if c.strip()]
    except ValueError:
        raise typer.BadParameter(f"--caps takes counts like 200,400,1000, not {caps!r}") from None
    if not cap_list or min(cap_list) < 1:
        raise typer.BadParameter(f"--caps needs positive counts, got {caps!r}")
    figures = run_bench(
        settings, n_requests=requests, caps=cap_list, model_version=model, seed=seed
    )
    print_table(figures)
    if json_path is not None:
        write_json(figures, json_path)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``serve``, ``bench serving`` and ``bench funnel`` to the ``feedrank`` command."""
    app.command("serve")(serve)
    bench_app.command("serving")(bench_serving)
    bench_app.command("funnel")(bench_funnel)
