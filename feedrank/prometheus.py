"""A local Prometheus over feedrank's /metrics, with the project's recording and alert rules.

Debian's ``prometheus`` package (``prometheus`` and ``promtool``, installed with apt-get when
absent, like redis-server) runs on 127.0.0.1:``observability.prometheus_port`` with its data
in ``<run folder>/prometheus/``. Its config is ``infra/prometheus/prometheus.yml`` rendered
from the resolved settings (ports, scrape and evaluation intervals) and loads
``infra/prometheus/*.rules.yml``. ``up`` also starts ``feedrank batch-metrics`` (the batch
outcomes of the run folder) so that the batch alerts have something to read.

``python -m feedrank.prometheus up|down|status`` (``make prometheus``; ``make down`` stops it).
Its own module so the service control of ``feedrank.services`` stays as it is; that module's
``status`` reports these two processes through one hook.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import typer
import yaml

from feedrank.cli_runner import run_cli
from feedrank.config import PROJECT_ROOT, Settings, get_settings
from feedrank.errors import FeedrankError
from feedrank.services.process import owned_pid, spawn, terminate

log = logging.getLogger(__name__)

RULES_DIR = PROJECT_ROOT / "infra" / "prometheus"
RULE_FILES = ("recording.rules.yml", "alerts.rules.yml")
PROMETHEUS, BATCH_METRICS = "prometheus", "batch-metrics"
READY_TIMEOUT_S = 60.0


def binary(tool: str = "prometheus") -> str:
    """Path of ``prometheus`` or ``promtool``; installs Debian's package when missing."""
    found = shutil.which(tool) or (
        f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists() else None
    )
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise FeedrankError(f"{tool} not found: install it (apt-get install -y prometheus)")
    print(f"[prometheus] {tool} not installed; installing Debian's package", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
    ):
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return shutil.which(tool) or f"/usr/bin/{tool}"


def _folder(settings: Settings) -> Path:
    return settings.paths.home / "prometheus"


def config_path(settings: Settings) -> Path:
    return _folder(settings) / "prometheus.yml"


def url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.observability.prometheus_port}"


def _seconds(value: float) -> str:
    return f"{int(value * 1000)}ms"


def render_config(settings: Settings) -> dict[str, Any]:
    """``infra/prometheus/prometheus.yml`` with the settings' ports and intervals."""
    obs = settings.observability
    host = "127.0.0.1" if obs.metrics_host in ("0.0.0.0", "::", "") else obs.metrics_host
    config = yaml.safe_load((RULES_DIR / "prometheus.yml").read_text())
    config["global"] = {
        "scrape_interval": _seconds(obs.scrape_interval_s),
        "evaluation_interval": _seconds(obs.evaluation_interval_s),
    }
    config["rule_files"] = [str(RULES_DIR / name) for name in RULE_FILES]
    serving = settings.serving
    ports = {
        # every serve process `make up` starts (one when serve is started by hand)
        "feedrank_serving": [
            serving.process_metrics_port(i) for i in range(serving.processes or 1)
        ],
        "feedrank_stream_features": [obs.stream_features_port],
        "feedrank_batch": [obs.batch_port],
    }
    for job in config["scrape_configs"]:
        targets = [f"{host}:{port}" for port in ports[job["job_name"]]]
        job["static_configs"] = [{"targets": targets}]
    return config


def write_config(settings: Settings) -> Path:
    path = config_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(render_config(settings), sort_keys=False))
    return path


def _markers(settings: Settings) -> dict[str, str]:
    return {PROMETHEUS: str(config_path(settings)), BATCH_METRICS: "batch-metrics"}


def ready(settings: Settings | None = None, timeout_s: float = 0.0) -> bool:
    """True once Prometheus answers ``/-/ready``."""
    settings = settings or get_settings()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url(settings)}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


def up(settings: Settings | None = None, batch_metrics: bool = True) -> bool:
    """Start Prometheus (and ``feedrank batch-metrics``) unless running; True if started."""
    settings = settings or get_settings()
    markers = _markers(settings)
    started = False
    if batch_metrics and owned_pid(settings, BATCH_METRICS, markers[BATCH_METRICS]) is None:
        spawn(
            settings,
            BATCH_METRICS,
            [sys.executable, "-m", "feedrank.cli", "batch-metrics"],
        )
        started = True
    if owned_pid(settings, PROMETHEUS, markers[PROMETHEUS]) is None:
        if ready(settings):
            raise FeedrankError(
                f"port {settings.observability.prometheus_port} answers as a Prometheus not "
                f"started from {settings.paths.home}; set observability.prometheus_port"
            )
        data = _folder(settings) / "data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            binary("prometheus"),
            f"--config.file={write_config(settings)}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{settings.observability.prometheus_port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=15d",
        ]
        print(f"[prometheus] starting on {url(settings)}", file=sys.stderr)
        spawn(settings, PROMETHEUS, argv)
        started = True
    if not ready(settings, READY_TIMEOUT_S):
        tail = (settings.paths.logs / "prometheus.log").read_text(errors="replace")[-2000:]
        raise FeedrankError(f"prometheus did not become ready; see logs/prometheus.log:\n{tail}")
    return started


def down(settings: Settings | None = None) -> bool:
    """Stop our Prometheus and batch-metrics exporter; True if any was stopped."""
    settings = settings or get_settings()
    stopped = False
    for name, marker in _markers(settings).items():
        pid = owned_pid(settings, name, marker)
        if pid is None:
            continue
        terminate(settings, name, pid, timeout_s=30.0)
        stopped = True
    return stopped


def status(settings: Settings | None = None) -> dict[str, dict[str, object]]:
    """Entries for ``feedrank.services.status``: pid (ours or None), answering, endpoint."""
    settings = settings or get_settings()
    markers = _markers(settings)
    obs = settings.observability
    batch_url = f"http://127.0.0.1:{obs.batch_port}/metrics"
    try:
        with urllib.request.urlopen(batch_url, timeout=2) as response:
            batch_ready = response.status == 200
    except (urllib.error.URLError, OSError):
        batch_ready = False
    return {
        PROMETHEUS: {
            "pid": owned_pid(settings, PROMETHEUS, markers[PROMETHEUS]),
            "ready": ready(settings),
            "endpoint": url(settings),
        },
        BATCH_METRICS: {
            "pid": owned_pid(settings, BATCH_METRICS, markers[BATCH_METRICS]),
            "ready": batch_ready,
            "endpoint": batch_url,
        },
    }


def alerts(settings: Settings | None = None) -> list[dict[str, Any]]:
    """The alerts Prometheus holds now (pending and firing), from its HTTP API."""
    import json

    settings = settings or get_settings()
    with urllib.request.urlopen(f"{url(settings)}/api/v1/alerts", timeout=5) as response:
        return json.loads(response.read())["data"]["alerts"]


app = typer.Typer(
    help="A local Prometheus (Debian's package) with feedrank's scrape config and rules.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("install")
def _cli_install() -> None:
    """Install Debian's prometheus package (prometheus, promtool) unless present."""
    binary("prometheus")
    binary("promtool")


@app.command("up")
def _cli_up() -> None:
    """Start Prometheus and the batch-metrics exporter (127.0.0.1, run folder)."""
    settings = get_settings()
    up(settings)
    typer.echo(f"prometheus: {url(settings)} (rules: {RULES_DIR})")


@app.command("down")
def _cli_down() -> None:
    """Stop the Prometheus and batch-metrics started from this run folder."""
    down(get_settings())


@app.command("status")
def _cli_status() -> None:
    """Whether Prometheus and batch-metrics run and answer."""
    for name, entry in status(get_settings()).items():
        state = "up" if entry["ready"] else "down"
        typer.echo(f"{name:14} {state:5} pid={entry['pid']} {entry['endpoint']}")


if __name__ == "__main__":
    run_cli(app, prog_name="python -m feedrank.prometheus")
