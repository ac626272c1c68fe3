"""The ``feedrank`` command: one entry point, a subcommand per capability.

Each capability module exposes ``register(app, bench_app)`` and is listed in ``COMMAND_MODULES``;
heavy imports (Spark, Feast, XGBoost) stay inside the command bodies so ``--help`` is fast.
Bad arguments and :class:`FeedrankError` end the process with one line on stderr and a
non-zero exit.
"""

from __future__ import annotations

import importlib
import sys

import typer
from typer._click import exceptions as click_exceptions  # typer vendors click

from feedrank.config import dump_settings, get_settings
from feedrank.errors import FeedrankError

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
    "feedrank.simulator.cli",
    "feedrank.featurestore",
    "feedrank.experiment",
)


@app.command("config")
def show_config() -> None:
    """Print the resolved configuration (profile YAML + FEEDRANK_* environment)."""
    typer.echo(dump_settings(get_settings()), nl=False)


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app, bench_app)


def main(typer_app: typer.Typer | None = None, prog_name: str | None = None) -> None:
    """Console entry point: one-line errors, exit 2 for usage, 1 for refused work.

    Args:
        typer_app: the app to run; ``feedrank`` by default (``python -m feedrank.services``
            passes its own so both entry points fail the same way).
        prog_name: name shown in usage and error hints.
    """
    try:
        (typer_app or app)(standalone_mode=False, prog_name=prog_name)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except click_exceptions.UsageError as exc:
        hint = f" (try '{exc.ctx.command_path} --help')" if exc.ctx else ""
        print(f"feedrank: error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(2)
    except (FeedrankError, ValueError, FileNotFoundError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"feedrank: error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
