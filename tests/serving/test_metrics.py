"""/metrics exposes the serving metrics through prometheus_client's HTTP server."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from serving import metrics

pytestmark = pytest.mark.unit


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_metrics_endpoint_lists_serving_metrics() -> None:
    assert metrics.serve_metrics(0) is None  # 0 disables the endpoint
    port = metrics.serve_metrics(_free_port())
    assert port is not None
    assert metrics.serve_metrics(port + 1) == port  # once per process
    metrics.DEAD_LETTERED.labels(kind="invalid").inc()
    metrics.CONSUMER_LAG.labels(partition="0").set(0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for name in (
        "feedrank_serving_stage_seconds",
        "feedrank_serving_end_to_end_seconds",
        "feedrank_serving_degraded_total",
        "feedrank_serving_deadline_misses_total",
        'feedrank_serving_dead_lettered_total{kind="invalid"}',
        'feedrank_serving_consumer_lag_messages{partition="0"}',
        "feedrank_serving_model_reloads_total",
    ):
        assert name in body, name
