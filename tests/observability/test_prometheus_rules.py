"""infra/prometheus and infra/grafana checked by Debian's promtool.

* the scrape config (as shipped and as rendered from the settings) and both rule files load;
* ``promtool test rules`` passes, and every alert has a unit test in which it fires and one in
  which it stays quiet;
* every query of the Grafana dashboard parses (promtool checks it as a recording rule), and
  every feedrank metric a rule or a panel reads is one the code defines.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from feedrank import prometheus
from feedrank.config import PROJECT_ROOT, ObservabilityConfig, PathsConfig, Settings
from feedrank.services.serve_processes import serve_metrics_port, serve_names

pytestmark = pytest.mark.unit

RULES = PROJECT_ROOT / "infra" / "prometheus"
DASHBOARD = PROJECT_ROOT / "infra" / "grafana" / "feedrank.json"
REQUIRED_ALERTS = {
    "FeedrankServingBudgetMisses",
    "FeedrankServingDegraded",
    "FeedrankServingConsumerLag",
    "FeedrankNoNewChampion",
    "FeedrankStreamFeaturesSilent",
    "FeedrankMonitorBreach",
}
SOURCES = ("feedrank", "jobs", "serving")


def _promtool(*args: str) -> str:
    result = subprocess.run(
        [prometheus.binary("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _rules(name: str) -> list[dict]:
    groups = yaml.safe_load((RULES / name).read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def test_shipped_and_rendered_configs_load(settings: Settings, tmp_path: Path) -> None:
    _promtool("check", "config", str(RULES / "prometheus.yml"))
    ours = settings.model_copy(
        update={
            "paths": PathsConfig(home=tmp_path),
            "observability": ObservabilityConfig(stream_features_port=23101, scrape_interval_s=1),
        }
    )
    path = prometheus.write_config(ours)
    _promtool("check", "config", str(path))
    rendered = yaml.safe_load(path.read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in rendered["scrape_configs"]}
    assert targets["feedrank_serving"] == [f"127.0.0.1:{ours.serving.metrics_port}"]
    assert targets["feedrank_stream_features"] == ["127.0.0.1:23101"]
    assert rendered["global"]["scrape_interval"] == "1000ms"

    # the cluster profile's serve processes: every one is scraped, on the ports make up gives them
    two = ours.model_copy(update={"serving": ours.serving.model_copy(update={"processes": 2})})
    rendered = yaml.safe_load(prometheus.write_config(two).read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in rendered["scrape_configs"]}
    assert targets["feedrank_serving"] == [
        f"127.0.0.1:{serve_metrics_port(two, name)}" for name in serve_names(two)
    ]
    assert len(set(targets["feedrank_serving"])) == 2


def test_alert_unit_tests_pass_and_cover_every_alert() -> None:
    _promtool("check", "rules", *(str(RULES / name) for name in prometheus.RULE_FILES))
    _promtool("test", "rules", str(RULES / "tests" / "alerts.test.yml"))
    alerts = {rule["alert"] for rule in _rules("alerts.rules.yml")}
    assert alerts >= REQUIRED_ALERTS
    cases = yaml.safe_load((RULES / "tests" / "alerts.test.yml").read_text())["tests"]
    fired, quiet = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == alerts, alerts - fired
    assert quiet == alerts, alerts - quiet


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = _dashboard_queries()
    titles = " ".join(title.lower() for title, _ in queries)
    for topic in ("requests per second", "p50 / p99", "misses", "degraded", "lag", "model", "arm"):
        assert topic in titles, topic
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(queries)} rules found" in _promtool("check", "rules", str(path))


def test_rules_and_panels_read_metrics_the_code_defines() -> None:
    exprs = [rule["expr"] for name in prometheus.RULE_FILES for rule in _rules(name)]
    exprs += [expr for _, expr in _dashboard_queries()]
    code = "".join(p.read_text() for src in SOURCES for p in (PROJECT_ROOT / src).rglob("*.py"))
    names = {n for e in exprs for n in re.findall(r"\bfeedrank_[a-z0-9_]+", e)}
    assert names
    for name in sorted(names):
        assert f'"{name.removesuffix("_bucket")}"' in code, name
