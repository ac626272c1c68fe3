"""The one exception type the CLI turns into a one-line message, and the runner that does it."""

from __future__ import annotations

import sys

import typer
from typer._click import exceptions as click_exceptions  # typer vendors click


class FeedrankError(Exception):
    """A failure with a reason a user can act on (bad input, refused model, broken gate)."""


def run_cli(typer_app: typer.Typer, prog_name: str) -> None:
    """Run a typer app: one line on stderr and exit 2 for bad usage, 1 for refused work.

    Shared by ``feedrank`` and ``python -m feedrank.services`` so both fail the same way;
    it lives here, not in ``feedrank.cli``, so running one does not import every command.
    """
    try:
        typer_app(standalone_mode=False, prog_name=prog_name)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except click_exceptions.UsageError as exc:
        hint = f" (try '{exc.ctx.command_path} --help')" if exc.ctx else ""
        print(f"{prog_name}: error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(2)
    except (FeedrankError, ValueError, FileNotFoundError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{prog_name}: error: {message}", file=sys.stderr)
        sys.exit(1)
