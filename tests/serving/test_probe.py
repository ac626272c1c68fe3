"""The serve pod's readiness probe reads the assigned-partitions gauge from a real /metrics."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from serving import probe

pytestmark = pytest.mark.unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ready_only_while_partitions_are_assigned(capsys: pytest.CaptureFixture[str]) -> None:
    registry = CollectorRegistry()
    gauge = Gauge(probe.GAUGE, "partitions", registry=registry)
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        assert probe.main(["--port", str(port)]) == 1
        assert "no partitions assigned" in capsys.readouterr().out
        gauge.set(3)
        assert probe.main(["--port", str(port)]) == 0
        assert "3 partition(s)" in capsys.readouterr().out
        gauge.set(0)  # a rebalance took them away
        assert probe.main(["--port", str(port)]) == 1
    finally:
        server.shutdown()
        thread.join()


def test_not_ready_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert probe.main(["--port", str(_free_port())]) == 1
    out = capsys.readouterr().out
    assert out.startswith("not ready") and "does not answer" in out
