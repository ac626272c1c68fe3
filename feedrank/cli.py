"""The ``feedrank`` command: one entry point, a subcommand per capability.

Each capability module exposes ``register(app, bench_app)`` and is listed in ``COMMAND_REGISTRARS``;
heavy imports (Spark, Feast, XGBoost) stay inside the command bodies so ``--help`` is fast.
Bad arguments and :class:`FeedrankError` end the process with one line on stderr and a
non-zero exit.
"""

from __future__ import annotations

import importlib.metadata

import typer

from feedrank.capacity_bench import register as register_capacity
from feedrank.cli_runner import run_cli
from feedrank.config import dump_settings, get_settings
from feedrank.demo import register as register_demo
from feedrank.experiment_cli import register as register_experiment
from feedrank.exporter import register as register_exporter
from feedrank.featurestore_cli import register as register_featurestore
from feedrank.simulator.cli import register as register_simulator
from jobs.cli import register as register_jobs
from jobs.monitor_cli import register as register_monitor
from jobs.quality_curve import register as register_quality_curve
from jobs.training_cli import register as register_training
from serving.cli import register as register_serving

app = typer.Typer(
    name="feedrank",
    help="Feed-ranking platform: simulate, build features and training data, train, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(
    help="Benchmarks; each prints a table and can write JSON.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")

# Each command module defines ``register(app: typer.Typer, bench: typer.Typer)``; plain imports,
# so the import graph is visible to tools and tests (the modules keep heavy imports lazy).
COMMAND_REGISTRARS = (
    register_serving,
    register_simulator,
    register_training,
    register_featurestore,
    register_experiment,
    register_demo,
    register_jobs,
    register_monitor,
    register_quality_curve,
    register_exporter,
    register_capacity,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"feedrank {importlib.metadata.version('feedrank')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Feed-ranking platform: simulate, build features and training data, train, serve."""


@app.command("config")
def show_config() -> None:
    """Print the resolved configuration (profile YAML + FEEDRANK_* environment)."""
    typer.echo(dump_settings(get_settings()), nl=False)


for _register in COMMAND_REGISTRARS:
    _register(app, bench_app)


def main() -> None:
    """Console entry point: one-line errors, exit 2 for usage, 1 for refused work."""
    run_cli(app, prog_name="feedrank")


if __name__ == "__main__":
    main()
