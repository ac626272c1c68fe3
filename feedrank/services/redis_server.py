"""The local redis-server (Debian's package) for the redis and cluster profiles."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.readiness import redis_ready
from feedrank.services.process import (
    is_running,
    log,
    log_tail,
    owned_pid,
    require_free_ports,
    resolve,
    say,
    service_lock,
    spawn,
    terminate,
)


def _redis_binary() -> str:
    """Path of ``redis-server``; installs Debian's package first when it is missing."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise FeedrankError("redis-server not found: install it (apt-get install -y redis-server)")
    say("redis-server not installed; installing Debian's package with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
        if subprocess.run(argv, env=env, check=False).returncode != 0:
            raise FeedrankError(f"{shlex.join(argv)} failed")
    return _redis_binary()


def redis_dir(settings: Settings) -> Path:
    return settings.paths.home / "redis"


def redis_up(settings: Settings | None = None) -> bool:
    """Start ``redis-server`` on 127.0.0.1 (data and log in the run folder) unless it runs.

    Returns:
        True if this call started it; False if it was already running and answering.
    """
    settings = resolve(settings)
    with service_lock(settings, "redis"):
        data_dir = redis_dir(settings)
        pid = owned_pid(settings, "redis", str(data_dir))
        if pid is not None and redis_ready(settings, 10.0):
            return False
        if pid is not None:
            terminate(settings, "redis", pid)
        elif redis_ready(settings):
            log.warning(
                "a redis-server not started from %s answers on %s; using it",
                settings.paths.home,
                settings.redis.url,
            )
            return False
        require_free_ports("redis-server", settings.redis.host, settings.redis.port)
        binary = _redis_binary()
        data_dir.mkdir(parents=True, exist_ok=True)
        settings.paths.logs.mkdir(parents=True, exist_ok=True)
        argv = [
            binary, "--bind", settings.redis.host, "--port", str(settings.redis.port),
            "--dir", str(data_dir), "--logfile", str(settings.paths.logs / "redis.log"),
            "--daemonize", "no", "--protected-mode", "yes", "--save", "60 1",
            "--dbfilename", "dump.rdb",
        ]  # fmt: skip
        say(f"starting redis-server on {settings.redis.url}")
        pid = spawn(settings, "redis", argv, output="redis.out")
        if not redis_ready(settings, 15.0):
            alive = is_running(pid)
            if alive:
                terminate(settings, "redis", pid)
            raise FeedrankError(
                f"redis-server did not answer PING; see {settings.paths.logs / 'redis.log'}:\n"
                + log_tail(settings.paths.logs / "redis.log")
            )
        return True


def redis_down(settings: Settings | None = None) -> bool:
    """Stop our redis-server (it saves its data on SIGTERM). True if one was stopped."""
    settings = resolve(settings)
    with service_lock(settings, "redis"):
        pid = owned_pid(settings, "redis", str(redis_dir(settings)))
        if pid is None:
            return False
        terminate(settings, "redis", pid)
        return True
