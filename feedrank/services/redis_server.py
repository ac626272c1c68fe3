"""The local redis-server (Debian's package) for the redis and cluster profiles."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

from feedrank.config import Settings, redis_password, redis_password_file
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


def ensure_password(settings: Settings) -> str:
    """The Redis password; with none set or on file, a random one written to the password
    file (mode 0600, its folder 0700), so every redis-server feedrank starts requires AUTH."""
    password = redis_password(settings)
    if password:
        return password
    path = redis_password_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    say(f"created a Redis password in {path}")
    return password


def _auth_config(settings: Settings, data_dir: Path, password: str) -> Path:
    """A 0600 config file with ``requirepass``: the password stays off the command line
    (which any local user can read in ``ps``)."""
    path = data_dir / "auth.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f'requirepass "{password}"\n')
    return path


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
        auth = _auth_config(settings, data_dir, ensure_password(settings))
        argv = [
            binary, str(auth), "--bind", settings.redis.host, "--port", str(settings.redis.port),
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
