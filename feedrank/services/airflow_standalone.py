"""Airflow for this run folder: its environment, the metadata DB migration, and
``airflow standalone`` (scheduler, dag processor, triggerer, API server + UI)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.services.process import (
    DAGS_FOLDER,
    STOP_TIMEOUT_S,
    group_members,
    log,
    log_tail,
    owned_pid,
    pid_file,
    resolve,
    say,
    service_lock,
    spawn,
    terminate,
)


def airflow_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment every Airflow command of this run folder needs (Makefile, tests, demo).

    AIRFLOW_HOME and the SQLite metadata DB live in ``<paths.home>/airflow``; DAGs come from
    the repository's ``dags/``; examples are off. Airflow reads these at import time, so set
    them before ``import airflow``.
    """
    settings = resolve(settings)
    home = settings.paths.home / "airflow"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.paths.logs / "airflow"),
        "AIRFLOW__API__PORT": str(settings.airflow.port),
    }


def airflow_migrate(settings: Settings | None = None, force: bool = False) -> bool:
    """Run ``airflow db migrate`` for this run folder once per Airflow version.

    Returns:
        True if the migration ran; False if the stamp says this DB is already migrated.
    """
    settings = resolve(settings)
    env = airflow_env(settings)
    home = Path(env["AIRFLOW_HOME"])
    version = importlib.metadata.version("apache-airflow")
    stamp = home / ".migrated"
    if not force and stamp.is_file() and stamp.read_text().strip() == version:
        _ensure_pools(env)
        return False
    home.mkdir(parents=True, exist_ok=True)
    say(f"airflow db migrate (Airflow {version}, AIRFLOW_HOME={home})")
    airflow = str(Path(sys.executable).parent / "airflow")
    result = subprocess.run([airflow, "db", "migrate"], env={**os.environ, **env}, check=False)
    if result.returncode != 0:
        raise FeedrankError(f"airflow db migrate failed ({result.returncode})")
    stamp.write_text(version + "\n")
    _ensure_pools(env)
    return True


def _ensure_pools(env: dict[str, str]) -> None:
    """The project's Airflow pools (feedrank.airflow_pools) exist in every migrated DB."""
    from feedrank.airflow_pools import ensure_pools

    ensure_pools(env)


# --------------------------------------------------------------------------- airflow standalone


def airflow_pid(settings: Settings) -> int | None:
    """The live pid of this run folder's ``airflow standalone`` (its AIRFLOW_HOME), or None."""
    home = airflow_env(settings)["AIRFLOW_HOME"]
    pid = owned_pid(settings, "airflow", "standalone")
    if pid is None:
        return None
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        environ = []
    if f"AIRFLOW_HOME={home}".encode() in environ:
        return pid
    pid_file(settings, "airflow").unlink(missing_ok=True)
    return None


def airflow_url(settings: Settings | None = None) -> str:
    """Address of the Airflow UI / API server of ``airflow_up`` (loopback only)."""
    return f"http://127.0.0.1:{resolve(settings).airflow.port}"


def airflow_password_file(settings: Settings | None = None) -> Path:
    """Where the simple auth manager writes the generated ``admin`` password."""
    home = Path(airflow_env(settings)["AIRFLOW_HOME"])
    return home / "simple_auth_manager_passwords.json.generated"


def airflow_ready(settings: Settings | None = None, timeout_s: float = 0.0) -> bool:
    """True once the API server answers and reports a healthy scheduler and dag processor."""
    url = f"{airflow_url(settings)}/api/v2/monitor/health"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                health = json.loads(response.read())
            if all(
                (health.get(part) or {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "dag_processor")
            ):
                return True
        except (OSError, ValueError) as exc:
            log.debug("airflow not ready: %s", exc)
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def airflow_up(settings: Settings | None = None, timeout_s: float = 300.0) -> bool:
    """Start ``airflow standalone`` (scheduler, dag processor, triggerer, API server + UI).

    Binds the API server to 127.0.0.1:``airflow.port``, uses this run folder's AIRFLOW_HOME
    and the repository's dags/; output goes to ``logs/airflow.log``. The ``admin`` password is
    generated into :func:`airflow_password_file` on first start.

    Returns:
        True if started, False if it was already running.

    Raises:
        FeedrankError: it did not become healthy within ``timeout_s``.
    """
    settings = resolve(settings)
    with service_lock(settings, "airflow"):
        if airflow_pid(settings):
            return False
        airflow_migrate(settings)
        env = {
            **airflow_env(settings),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": airflow_url(settings),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # standalone starts its components as `airflow` from PATH: use this venv's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        airflow = str(Path(sys.executable).parent / "airflow")
        pid = spawn(settings, "airflow", [airflow, "standalone"], env)
        say(f"airflow standalone starting (pid {pid}), waiting for {airflow_url(settings)}")
        if not airflow_ready(settings, timeout_s=timeout_s):
            terminate(settings, "airflow", pid)
            tail = log_tail(settings.paths.logs / "airflow.log")
            raise FeedrankError(f"airflow did not become healthy in {timeout_s:.0f} s:\n{tail}")
    return True


def airflow_down(settings: Settings | None = None) -> bool:
    """Stop this run folder's ``airflow standalone`` and its components; no-op if not running.

    The components (scheduler, dag processor, triggerer, API server) share standalone's process
    group; they get SIGTERM with it and are waited for, then SIGKILLed after the stop timeout.
    """
    settings = resolve(settings)
    with service_lock(settings, "airflow"):
        pid = airflow_pid(settings)
        if pid is None:
            return False
        terminate(settings, "airflow", pid)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if group_members(pid):
            log.warning("airflow components ignored SIGTERM for %.0f s; killing", STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    return True
