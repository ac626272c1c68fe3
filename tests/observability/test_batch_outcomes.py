"""Batch outcomes recorded in the run folder, served as Prometheus metrics."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from feedrank.config import ObservabilityConfig, PathsConfig, Settings
from feedrank.exporter import OutcomeCollector, record_outcome, record_time, serve_batch_metrics

pytestmark = pytest.mark.unit


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings(settings: Settings, home: Path, port: int = 0) -> Settings:
    return settings.model_copy(
        update={
            "paths": PathsConfig(home=home),
            "observability": ObservabilityConfig(batch_port=port),
        }
    )


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_gauges_are_set_and_counters_add_up(settings: Settings, tmp_path: Path) -> None:
    s = _settings(settings, tmp_path)
    record_outcome(s, "feedrank_batch_monitor_breaches", "h", 2, {"check": "drift"})
    record_outcome(s, "feedrank_batch_monitor_breaches", "h", 0, {"check": "drift"})
    record_outcome(s, "feedrank_batch_monitor_breaches", "h", 1, {"check": "auc"})
    for rows in (5, 7):
        record_outcome(
            s, "feedrank_landing_records_total", "h", rows, {"topic": "tweets"}, kind="counter"
        )
    record_time(s, "feedrank_batch_last_promoted_timestamp_seconds", "h")
    registry = CollectorRegistry()
    registry.register(OutcomeCollector(s))
    samples = _samples(generate_latest(registry).decode())
    assert samples[("feedrank_batch_monitor_breaches", (("check", "drift"),))] == 0
    assert samples[("feedrank_batch_monitor_breaches", (("check", "auc"),))] == 1
    assert samples[("feedrank_landing_records_total", (("topic", "tweets"),))] == 12
    assert samples[("feedrank_batch_last_promoted_timestamp_seconds", ())] > 1.7e9


def test_batch_metrics_endpoint_reads_the_file_at_each_scrape(
    settings: Settings, tmp_path: Path
) -> None:
    port = _free_port()
    s = _settings(settings, tmp_path, port)
    stop = threading.Event()
    server = threading.Thread(target=serve_batch_metrics, args=(s, stop), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        for _ in range(100):
            try:
                first = urllib.request.urlopen(url, timeout=5).read().decode()
                break
            except OSError:
                stop.wait(0.1)
        assert "feedrank_batch_validation_failures" not in first
        record_outcome(s, "feedrank_batch_validation_failures", "h", 3, {"kind": "lake"})
        second = _samples(urllib.request.urlopen(url, timeout=5).read().decode())
        assert second[("feedrank_batch_validation_failures", (("kind", "lake"),))] == 3
    finally:
        stop.set()
        server.join(timeout=10)


def test_an_unwritable_run_folder_does_not_fail_the_job(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "metrics").write_text("a file where the folder should be")
    record_outcome(_settings(settings, tmp_path), "feedrank_batch_monitor_breaches", "h", 1)
