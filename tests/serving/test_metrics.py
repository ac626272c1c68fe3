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


def test_a_collection_under_a_metrics_lock_does_not_block_the_loop() -> None:
    """The GC-pause hook runs inside whatever allocation set the collector off, possibly
    while that thread holds a prometheus_client lock (in multiprocess mode one lock guards
    every value). Observing there deadlocked the serve loop; the hook only notes the pause
    and the loop observes it later."""
    import gc
    import threading

    from serving.consumer import _GC_PAUSE_BY_GENERATION, _observe_gc_pauses, _time_gc

    before = _GC_PAUSE_BY_GENERATION[2]._sum.get()
    lock = _GC_PAUSE_BY_GENERATION[2]._sum._lock  # the lock an observe() would take
    done = threading.Event()

    def collect_holding_the_lock() -> None:
        with lock:
            gc.callbacks.append(_time_gc)
            try:
                gc.collect()
            finally:
                gc.callbacks.remove(_time_gc)
        done.set()

    threading.Thread(target=collect_holding_the_lock, daemon=True).start()
    assert done.wait(timeout=30), "the GC hook blocked on a metrics lock"
    _observe_gc_pauses()
    assert _GC_PAUSE_BY_GENERATION[2]._sum.get() > before
