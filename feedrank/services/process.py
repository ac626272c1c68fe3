"""Process control of the local services: pid files that are trusted only when they name this
run folder, detached start, stop with a timeout, locks, port checks, config templates."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

from feedrank.config import PROJECT_ROOT, PathsConfig, Settings, get_settings
from feedrank.errors import FeedrankError

log = logging.getLogger("feedrank.services")

INFRA = PROJECT_ROOT / "infra"
DAGS_FOLDER = PROJECT_ROOT / "dags"
# How long a stop waits for a clean exit before SIGKILL (a broker flushes its logs first).
STOP_TIMEOUT_S = 30.0


def resolve(settings: Settings | None) -> Settings:
    """``settings``, or the process settings when None."""
    return settings or get_settings()


def say(message: str) -> None:
    """Progress for people running ``make``; the same line goes to the log."""
    log.info(message)
    print(f"[feedrank.services] {message}", file=sys.stderr, flush=True)


def pid_file(settings: Settings, name: str) -> Path:
    return settings.paths.pids / f"{name}.pid"


def is_running(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (reaping it if it is our exited child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def cwd_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def owned_pid(settings: Settings, name: str, marker: str) -> int | None:
    """The live pid recorded for ``name`` if its command line or working folder is ``marker``.

    (redis-server rewrites its process title, so it is recognised by its ``--dir``.)

    A pid file whose process is gone, or whose pid now belongs to another program (pids are
    reused), is removed and never signalled.
    """
    path = pid_file(settings, name)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        path.unlink(missing_ok=True)
        return None
    if is_running(pid) and (marker in cmdline(pid) or cwd_of(pid) == marker):
        return pid
    log.info("removing stale pid file %s (pid %s is not our %s)", path, pid, name)
    path.unlink(missing_ok=True)
    return None


def spawn(
    settings: Settings,
    name: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    output: str | None = None,
) -> int:
    """Start ``argv`` detached (own session, so ``make up`` can exit); pid file + log.

    Its stdout/stderr go to ``logs/<output>`` (default ``<name>.log``; services that write
    their own ``<name>.log`` pass ``<name>.out`` for what they print before that).
    """
    settings.paths.logs.mkdir(parents=True, exist_ok=True)
    settings.paths.pids.mkdir(parents=True, exist_ok=True)
    out = settings.paths.logs / (output or f"{name}.log")
    log.info("starting %s: %s", name, shlex.join(argv))
    with out.open("ab") as sink:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=settings.paths.home,
        )
    pid_file(settings, name).write_text(f"{proc.pid}\n")
    return proc.pid


def terminate(settings: Settings, name: str, pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group, wait for the exit, SIGKILL after ``timeout_s``."""
    say(f"stopping {name} (pid {pid})")
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            # _spawn made each service a session leader: its group holds only its children.
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not is_running(pid):
                pid_file(settings, name).unlink(missing_ok=True)
                return
            time.sleep(0.1)
        if sig == signal.SIGTERM:
            log.warning("%s (pid %s) ignored SIGTERM for %.0f s; killing it", name, pid, wait_s)
    raise FeedrankError(f"{name} (pid {pid}) did not exit after SIGKILL")


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock across processes (released when the block exits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def service_lock(settings: Settings, name: str) -> contextlib.AbstractContextManager[None]:
    """Serialise up/down of one service of one run folder across processes."""
    return file_lock(settings.paths.pids / f"{name}.lock")


def require_free_ports(service: str, host: str, *ports: int) -> None:
    """Fail clearly when a port is taken, instead of starting a process that cannot bind.

    Without this, a foreign server on the same port would answer the readiness probe while
    our process dies on "address already in use".
    """
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # Servers set SO_REUSEADDR too, so sockets in TIME_WAIT do not count as taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise FeedrankError(
                    f"cannot start {service}: {host}:{port} is in use by another process "
                    f"({exc.strerror}); pick other ports with FEEDRANK_* overrides"
                ) from exc


def render_template(template: Path, target: Path, **values: object) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(string.Template(template.read_text()).substitute(values))
    return target


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def feedrank_processes(settings: Settings, subcommand: str) -> list[int]:
    """Pids of live ``feedrank <subcommand>`` processes of this run folder (oldest first).

    ``feedrank serve`` and ``feedrank stream-features`` are started by the demo, the DAGs or a
    person, not from a pid file; a process is this run folder's when its
    ``FEEDRANK_PATHS__HOME`` (or the default run folder) is ``settings.paths.home``.
    """
    default_home = PathsConfig.model_fields["home"].default
    found = []
    for entry in sorted(Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):
        pid = int(entry.name)
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            environ = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        names = [Path(arg).name for arg in argv]
        launcher = next((i for i, n in enumerate(names) if n in ("feedrank", "feedrank.cli")), None)
        if launcher is None or subcommand not in argv[launcher + 1 :]:
            continue
        env = dict(item.split("=", 1) for item in environ if "=" in item)
        home = Path(env["FEEDRANK_PATHS__HOME"]) if "FEEDRANK_PATHS__HOME" in env else default_home
        if not home.is_absolute():
            home = Path(cwd_of(pid) or ".") / home
        if home.resolve() == settings.paths.home.resolve() and is_running(pid):
            found.append(pid)
    return found


def http_answers(url: str, timeout_s: float = 2.0) -> bool:
    """True if a GET of ``url`` returns a 2xx response within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (OSError, ValueError):
        return False


def process_cpu_seconds(pids: Iterable[int | None]) -> float:
    """User + system CPU seconds of processes from ``/proc`` (unknown or gone ones count 0)."""
    ticks = 0
    for pid in pids:
        if pid is None:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
