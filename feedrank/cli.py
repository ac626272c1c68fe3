"""The ``feedrank`` command: one entry point, a subcommand per capability.

Each capability module exposes ``register(app, bench_app)`` and is listed in ``COMMAND_MODULES``;
heavy imports (Spark, Feast, XGBoost) stay inside the command bodies so ``--help`` is fast.
Bad arguments and :class:`FeedrankError` end the process with one line on stderr and a
non-zero exit.
"""

from __future__ import annotations

import importlib
import importlib.metadata

import typer

from feedrank.config import dump_settings, get_settings
from feedrank.errors import run_cli

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

# Modules that add subcommands; each defines ``register(app: typer.Typer, bench: typer.Typer)``.
COMMAND_MODULES: tuple[str, ...] = (
    "serving.cli",
    "feedrank.simulator.cli",
    "jobs.training_cli",
    "feedrank.featurestore",
    "feedrank.experiment",
    "feedrank.demo",
    "jobs.cli",
    "jobs.monitor_cli",
    "jobs.quality_curve",
    "feedrank.exporter",
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


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app, bench_app)


def main() -> None:
    """Console entry point: one-line errors, exit 2 for usage, 1 for refused work."""
    run_cli(app, prog_name="feedrank")


if __name__ == "__main__":
    main()
