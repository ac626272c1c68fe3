"""Readable logs under the run folder: ``<paths.home>/logs/<component>.log``."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, TextIO

from feedrank.config import Settings, dump_settings, get_settings

if TYPE_CHECKING:
    from tqdm import tqdm

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(component: str, settings: Settings | None = None) -> logging.Logger:
    """Log to ``logs/<component>.log`` and stderr; record the resolved config once."""
    settings = settings or get_settings()
    settings.paths.logs.mkdir(parents=True, exist_ok=True)
    path = settings.paths.logs / f"{component}.log"
    root = logging.getLogger()
    if not any(getattr(h, "_feedrank", None) == str(path) for h in root.handlers):
        file_handler = logging.FileHandler(path)
        file_handler._feedrank = str(path)  # type: ignore[attr-defined]
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(file_handler)
        if not any(getattr(h, "_feedrank", None) == "stderr" for h in root.handlers):
            stream = logging.StreamHandler(sys.stderr)
            stream._feedrank = "stderr"  # type: ignore[attr-defined]
            stream.setFormatter(logging.Formatter(_FORMAT))
            stream.setLevel(logging.WARNING)
            root.addHandler(stream)
        root.setLevel(logging.INFO)
        for noisy in ("kafka", "py4j", "urllib3", "feast", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # kafka-python warns on every SCRAM login without TLS; SCRAM never sends the password
        # and the missing TLS is stated once, in docs/security.md.
        logging.getLogger("kafka.sasl").setLevel(logging.ERROR)
    logger = logging.getLogger(f"feedrank.{component}")
    logger.info("resolved config (profile %s):\n%s", settings.profile, dump_settings(settings))
    return logger


class _LineWriter:
    """A file for tqdm that turns refreshes into plain lines (no carriage returns), at most
    one per ``every_s`` seconds; the bar's last state is written when it closes."""

    def __init__(self, stream: TextIO, every_s: float) -> None:
        self._stream, self._every_s = stream, every_s
        self._pending, self._last = "", -float("inf")

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self._pending = line
            if time.monotonic() - self._last >= self._every_s:
                self._emit()
        elif "\n" in text:  # tqdm closes the bar with a newline
            self._emit()
        return len(text)

    def _emit(self) -> None:
        if self._pending:
            self._stream.write(self._pending + "\n")
            self._pending, self._last = "", time.monotonic()

    def flush(self) -> None:
        self._stream.flush()


def progress_bar(
    *, stream: TextIO | None = None, enabled: bool = True, log_every_s: float = 30.0, **tqdm_kwargs
) -> tqdm:
    """A tqdm bar that redraws in place on a terminal and writes a plain line at most every
    ``log_every_s`` seconds into a log or pipe, so logs carry progress without
    carriage-return spam. ``tqdm_kwargs`` go to tqdm (total, desc, unit, …)."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    on_terminal = hasattr(stream, "isatty") and stream.isatty()
    if on_terminal:
        return tqdm(file=stream, disable=not enabled, **tqdm_kwargs)
    return tqdm(
        file=_LineWriter(stream, log_every_s),
        disable=not enabled,
        mininterval=log_every_s,
        dynamic_ncols=False,
        ncols=100,
        **tqdm_kwargs,
    )
