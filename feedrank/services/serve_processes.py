"""The ``feedrank serve`` processes ``make up`` starts (``serving.processes``; 2 in the cluster
profile): members of one consumer group, each with its own ``/metrics`` port, pid file
``serve-<i>`` and log ``serve-<i>.log``. Ready once the member owns partitions (its
``feedrank_serving_assigned_partitions`` gauge), so the group has formed."""

from __future__ import annotations

import shutil
import sys
import time
import urllib.request
from pathlib import Path

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.services.process import (
    is_running,
    log_tail,
    owned_pid,
    pid_file,
    resolve,
    say,
    service_lock,
    spawn,
    terminate,
)

READY_TIMEOUT_S = 180.0


def serve_names(settings: Settings) -> list[str]:
    return [f"serve-{i}" for i in range(1, settings.serving.processes + 1)]


def serve_metrics_port(settings: Settings, name: str) -> int:
    """The ``/metrics`` port of the ``serve-<i>`` process ``make up`` starts."""
    return settings.serving.process_metrics_port(int(name.rsplit("-", 1)[1]) - 1)


def _feedrank() -> str:
    found = Path(sys.executable).parent / "feedrank"
    return str(found) if found.exists() else (shutil.which("feedrank") or "feedrank")


def _owned_partitions(port: int) -> float:
    """The member's ``feedrank_serving_assigned_partitions`` (0 when it does not answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "feedrank_serving_assigned_partitions"
    )


def serve_up(settings: Settings | None = None) -> bool:
    """Start the ``serving.processes`` members not running; wait until each owns partitions.

    Returns:
        True if this call started a process.

    Raises:
        FeedrankError: a process exited or did not join the group in time (with its log).
    """
    settings = resolve(settings)
    with service_lock(settings, "serve"):
        marker = str(settings.paths.home)
        started: dict[str, int] = {}
        for name in serve_names(settings):
            if owned_pid(settings, name, marker) is not None:
                continue
            env = {
                "FEEDRANK_PATHS__HOME": marker,
                "FEEDRANK_SERVING__METRICS_PORT": str(serve_metrics_port(settings, name)),
            }
            started[name] = spawn(settings, name, [_feedrank(), "serve"], env=env)
        if not started:
            return False
        say(
            f"starting {len(started)} feedrank serve process(es), group {settings.serving.group_id}"
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = dict(started)
        while waiting:
            for name, pid in list(waiting.items()):
                if not is_running(pid):
                    pid_file(settings, name).unlink(missing_ok=True)
                    raise FeedrankError(
                        f"{name} exited during start-up; see {settings.paths.logs / name}.log:\n"
                        + log_tail(settings.paths.logs / f"{name}.log")
                    )
                if _owned_partitions(serve_metrics_port(settings, name)) > 0:
                    del waiting[name]
            if waiting and time.monotonic() >= deadline:
                raise FeedrankError(f"{sorted(waiting)} did not join the group in time")
            time.sleep(0.5)
        say(f"serving: {', '.join(f'{n} (pid {p})' for n, p in started.items())}")
        return True


def serve_down(settings: Settings | None = None) -> bool:
    """Stop the serve processes ``make up`` started from this run folder (SIGTERM: each
    finishes its batch and commits).

    Returns:
        True if one was stopped.
    """
    settings = resolve(settings)
    marker = str(settings.paths.home)
    with service_lock(settings, "serve"):
        stopped = False
        for path in sorted(settings.paths.pids.glob("serve-*.pid")):
            name = path.stem
            pid = owned_pid(settings, name, marker)
            if pid is not None:
                terminate(settings, name, pid)
                stopped = True
        return stopped
