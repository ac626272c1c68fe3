"""Readable logs under the run folder: ``<paths.home>/logs/<component>.log``."""

from __future__ import annotations

import logging
import sys

from feedrank.config import Settings, dump_settings, get_settings

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
    logger = logging.getLogger(f"feedrank.{component}")
    logger.info("resolved config (profile %s):\n%s", settings.profile, dump_settings(settings))
    return logger
