"""Prometheus exposition shared by every feedrank process, and the batch outcomes.

* :func:`start_metrics_server`: ``/metrics`` of a long-running process (``feedrank serve``,
  ``feedrank stream-features``) on ``observability.metrics_host`` (prometheus_client's own
  HTTP server), once per process.
* Batch work (validation, monitoring, training, promotion, landing) runs to completion, so it
  cannot be scraped while it runs and a Pushgateway would be one more service. Each job
  records its outcome instead in the run folder (:func:`record_outcome`,
  ``<home>/metrics/batch_outcomes.json``, replaced atomically under a lock), and
  ``feedrank batch-metrics`` serves that file as metrics, read afresh at every scrape
  (:class:`OutcomeCollector`, a prometheus_client custom collector).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from feedrank.config import Settings

log = logging.getLogger(__name__)

OUTCOMES_FILE = "batch_outcomes.json"
Kind = Literal["gauge", "counter"]

_server_lock = threading.Lock()
_server_port: int | None = None


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int | None:
    """Expose the default registry's ``/metrics`` on ``host``:``port`` once per process.

    Returns:
        The port serving metrics (the first one started), or ``None`` when ``port`` is 0.
    """
    global _server_port
    if port <= 0:
        return None
    with _server_lock:
        if _server_port is None:
            start_http_server(port, addr=host)
            _server_port = port
        return _server_port


def outcomes_path(settings: Settings) -> Path:
    return settings.paths.home / "metrics" / OUTCOMES_FILE


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f".{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_outcomes(settings: Settings) -> dict[str, dict]:
    """The recorded outcomes: ``{metric: {"kind", "help", "samples": [[labels, value]]}}``."""
    path = outcomes_path(settings)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("unreadable batch outcomes %s: %s", path, exc)
        return {}


def record_outcome(
    settings: Settings,
    name: str,
    help_text: str,
    value: float,
    labels: Mapping[str, str] | None = None,
    kind: Kind = "gauge",
) -> None:
    """Set a gauge (or add to a counter) among the batch outcomes of the run folder.

    Never raises: a job's outcome must not fail because its metric could not be written.
    """
    try:
        path = outcomes_path(settings)
        with _locked(path):
            outcomes = read_outcomes(settings)
            metric = outcomes.setdefault(name, {"kind": kind, "help": help_text, "samples": []})
            key = dict(sorted((labels or {}).items()))
            for sample in metric["samples"]:
                if sample[0] == key:
                    sample[1] = sample[1] + value if kind == "counter" else value
                    break
            else:
                metric["samples"].append([key, value])
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".outcomes-")
            with os.fdopen(fd, "w") as out:
                json.dump(outcomes, out, indent=1, sort_keys=True)
            os.replace(tmp, path)
    except Exception:
        log.exception("could not record the batch outcome %s", name)


def record_time(settings: Settings, name: str, help_text: str, **labels: str) -> None:
    """``name`` (a ``*_timestamp_seconds`` gauge) = now."""
    record_outcome(settings, name, help_text, time.time(), labels)


class OutcomeCollector(Collector):
    """The run folder's batch outcomes as metric families, read at each scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for name, metric in sorted(read_outcomes(self.settings).items()):
            samples = metric.get("samples", [])
            label_names = sorted({k for labels, _ in samples for k in labels})
            if metric.get("kind") == "counter":
                family: GaugeMetricFamily | CounterMetricFamily = CounterMetricFamily(
                    name.removesuffix("_total"), metric.get("help", name), labels=label_names
                )
            else:
                family = GaugeMetricFamily(name, metric.get("help", name), labels=label_names)
            for labels, value in samples:
                family.add_metric([labels.get(k, "") for k in label_names], float(value))
            yield family


def serve_batch_metrics(settings: Settings, stop: threading.Event | None = None) -> int:
    """Serve the batch outcomes on ``observability.batch_port`` until ``stop`` (or forever)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(OutcomeCollector(settings))
    port = settings.observability.batch_port
    server, thread = start_http_server(
        port, addr=settings.observability.metrics_host, registry=registry
    )
    log.info(
        "batch outcomes of %s on %s:%d",
        settings.paths.home,
        settings.observability.metrics_host,
        port,
    )
    try:
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        thread.join(timeout=5)
    return port


def register(app, bench_app) -> None:
    """Add ``batch-metrics`` to the ``feedrank`` command."""
    del bench_app

    @app.command("batch-metrics")
    def batch_metrics_command() -> None:
        """Serve the batch outcomes recorded in the run folder as Prometheus /metrics."""
        from feedrank.config import get_settings
        from feedrank.logs import setup_logging

        settings = get_settings()
        setup_logging("batch-metrics", settings)
        serve_batch_metrics(settings)
