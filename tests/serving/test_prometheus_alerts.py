"""A real Prometheus scrapes a running ``feedrank serve`` and fires the budget-miss alert.

Debian's prometheus runs on 127.0.0.1 with the project's rules (infra/prometheus), scraping
every second; ``feedrank serve`` (one process, 1,000 candidates a request) gets far more
requests than two shared cores can rank inside the 300 ms budget, so feeds are answered
late and FeedrankServingBudgetMisses goes pending, then firing. Every dashboard query is
then run against the same Prometheus.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from serving_helpers import fresh_group, make_request, send_requests

from feedrank import prometheus
from feedrank.config import PROJECT_ROOT, ObservabilityConfig, PathsConfig, Settings

pytestmark = pytest.mark.integration

ALERT = "FeedrankServingBudgetMisses"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _query(settings: Settings, expr: str) -> dict:
    query = urllib.parse.urlencode({"query": expr})
    url = f"{prometheus.url(settings)}/api/v1/query?{query}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.timeout(900)
def test_budget_miss_alert_fires_under_overload(
    kafka: Settings, serve_settings: Settings, champion: str, feast_world: Settings, tmp_path: Path
) -> None:
    from kafka import KafkaProducer

    metrics_port = _free_port()
    settings = fresh_group(serve_settings.model_copy(update={"kafka": kafka.kafka}))
    settings = settings.model_copy(
        update={
            "serving": settings.serving.model_copy(update={"metrics_port": metrics_port}),
            "observability": ObservabilityConfig(
                prometheus_port=_free_port(),
                stream_features_port=_free_port(),
                batch_port=_free_port(),
                scrape_interval_s=1,
                evaluation_interval_s=1,
            ),
        }
    )
    prom_settings = settings.model_copy(update={"paths": PathsConfig(home=tmp_path / "prom")})
    env = {
        **os.environ,
        "FEEDRANK_PATHS__HOME": str(settings.paths.home),
        "FEEDRANK_KAFKA__HOST": settings.kafka.host,
        "FEEDRANK_KAFKA__PORT": str(settings.kafka.port),
        "FEEDRANK_SERVING__GROUP_ID": settings.serving.group_id,
        "FEEDRANK_SERVING__METRICS_PORT": str(metrics_port),
    }
    log_path = tmp_path / "serve.out"
    with log_path.open("ab") as out:
        serve = subprocess.Popen(
            [str(Path(sys.executable).parent / "feedrank"), "serve"],
            env=env,
            stdout=out,
            stderr=out,
        )
    stop = threading.Event()
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=5)

    def overload() -> None:
        # Far more 1,000-candidate requests than one process ranks in the budget.
        i, requests = 0, []
        while not stop.is_set():
            for _ in range(50):
                requests.append(make_request(i % 200, [(7 * i + k) % 2_000 for k in range(1_000)]))
                i += 1
            send_requests(producer, requests)
            requests.clear()
            stop.wait(0.1)

    sender = threading.Thread(target=overload, daemon=True)
    try:
        assert prometheus.up(prom_settings, batch_metrics=False)
        # Ready once serve owns its partitions (Feast and XGBoost imports take a while).
        deadline = time.monotonic() + 300
        while True:
            assert serve.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            result = _query(prom_settings, "sum(feedrank_serving_assigned_partitions)")["data"]
            if result["result"] and float(result["result"][0]["value"][1]) > 0:
                break
            time.sleep(1)
        assert not [
            a for a in prometheus.alerts(prom_settings) if a["labels"]["alertname"] == ALERT
        ]
        sender.start()
        states: list[str] = []
        deadline = time.monotonic() + 300
        while "firing" not in states:
            assert serve.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, (states, log_path.read_text()[-3000:])
            states = [
                a["state"]
                for a in prometheus.alerts(prom_settings)
                if a["labels"]["alertname"] == ALERT
            ]
            time.sleep(1)
        ratio = _query(prom_settings, "feedrank:serving_deadline_miss_ratio:rate1m")["data"]
        assert float(ratio["result"][0]["value"][1]) > 0.01
        # Every dashboard query runs on the live Prometheus.
        dashboard = json.loads((PROJECT_ROOT / "infra" / "grafana" / "feedrank.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                assert _query(prom_settings, target["expr"])["status"] == "success", target
    finally:
        stop.set()
        if sender.is_alive():
            sender.join(timeout=30)
        producer.close(timeout=10)
        serve.terminate()
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(timeout=30)
        prometheus.down(prom_settings)
