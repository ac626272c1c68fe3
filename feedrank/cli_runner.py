"""The runner every command line shares: one line on stderr per problem, never a traceback.

Above the configuration (it finds the run folder's log for unexpected failures), so it is not
in ``feedrank.errors``, which the configuration itself raises from.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import traceback
from pathlib import Path

import typer
from pydantic import ValidationError
from typer._click import exceptions as click_exceptions  # typer vendors click

from feedrank.errors import ConfigError, FeedrankError

# The log of failures nobody planned for, under the run folder's logs/.
ERROR_LOG = "feedrank-errors.log"


def validation_lines(exc: ValidationError) -> list[str]:
    """One line per wrong field, from pydantic's own error data: ``kafka.port: ... (got 'abc')``."""
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or exc.title
        line = f"{where}: {error['msg']}"
        # The offending value, unless it is a whole section (a model-level check) or absent.
        if error["type"] != "missing" and not isinstance(error.get("input"), dict | list):
            line += f" (got {error.get('input')!r})"
        lines.append(line)
    return lines


def _error_log_path() -> Path:
    """``<paths.logs>/feedrank-errors.log``; the temp folder if the run folder is unusable."""
    try:
        from feedrank.config import get_settings

        logs = get_settings().paths.logs
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / ERROR_LOG
        path.open("a").close()
        return path
    except Exception:
        return Path(tempfile.gettempdir()) / ERROR_LOG


def log_unexpected(prog_name: str, exc: BaseException) -> Path:
    """Append the traceback of ``exc`` to the error log; return the log's path."""
    path = _error_log_path()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(f"feedrank.errors.{prog_name}")
    logger.propagate = False  # the traceback goes to the file only, not to stderr
    logger.addHandler(handler)
    try:
        logger.error(
            "%s %s failed:\n%s",
            prog_name,
            " ".join(sys.argv[1:]),
            "".join(traceback.format_exception(exc)),
        )
    finally:
        logger.removeHandler(handler)
        handler.close()
    return path


def run_cli(typer_app: typer.Typer, prog_name: str) -> None:
    """Run a typer app: one line on stderr per problem, never a traceback.

    Exit 2 for bad usage and bad configuration (one line per wrong setting), 1 for refused
    work, and 1 for an unexpected exception: its type and message on one line with the path
    of the log that holds the traceback. Shared by ``feedrank`` and ``python -m
    feedrank.services`` so both fail the same way; it lives here, not in ``feedrank.cli``, so
    running one does not import every command.
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
    except ValidationError as exc:
        if exc.title != "Settings":
            _fail_one_line(prog_name, exc)
        for line in validation_lines(exc):
            print(f"{prog_name}: config error: {line}", file=sys.stderr)
        sys.exit(2)
    except ConfigError as exc:
        print(f"{prog_name}: config error: {_first_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except (FeedrankError, ValueError, FileNotFoundError) as exc:
        _fail_one_line(prog_name, exc)
    except Exception as exc:
        path = log_unexpected(prog_name, exc)
        print(
            f"{prog_name}: error: unexpected {type(exc).__name__}: {_first_line(exc)} "
            f"(traceback in {path})",
            file=sys.stderr,
        )
        sys.exit(1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail_one_line(prog_name: str, exc: BaseException) -> None:
    print(f"{prog_name}: error: {_first_line(exc)}", file=sys.stderr)
    sys.exit(1)
