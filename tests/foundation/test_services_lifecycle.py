"""`up` twice / `down` twice through the command the Makefile runs; stale pid files.

The lifecycle test runs ``python -m feedrank.services`` (what ``make up`` / ``make down``
call) in subprocesses with their own run folder and ports, so the session's broker that the
other tests use is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from feedrank import services
from feedrank.config import PROJECT_ROOT, Settings


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line or working folder contains ``text`` (zombies excluded)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (text in cmdline or text in cwd):
            found.append(int(proc.name))
    return found


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feedrank.services", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_up_twice_down_twice_redis_profile(tmp_path: Path) -> None:
    home = tmp_path / "run"
    env = {
        **os.environ,
        "FEEDRANK_PROFILE": "redis",
        "FEEDRANK_PATHS__HOME": str(home),
        # 100 above the session's own ports (tests/conftest.py), so two sessions with their
        # own ports never race for the same ones (fixed ports did, between worktrees).
        "FEEDRANK_KAFKA__PORT": str(int(os.environ["FEEDRANK_KAFKA__PORT"]) + 100),
        "FEEDRANK_KAFKA__CONTROLLER_PORT": str(
            int(os.environ["FEEDRANK_KAFKA__CONTROLLER_PORT"]) + 100
        ),
        "FEEDRANK_REDIS__PORT": str(int(os.environ["FEEDRANK_REDIS__PORT"]) + 100),
    }
    try:
        first = _run(["up"], env)
        assert first.returncode == 0, first.stderr
        assert "kafka: started" in first.stderr and "redis: started" in first.stderr
        pids = {n: int((home / "run" / f"{n}.pid").read_text()) for n in ("kafka", "redis")}

        second = _run(["up"], env)
        assert second.returncode == 0, second.stderr
        assert "kafka: already running" in second.stderr
        assert "redis: already running" in second.stderr
        assert {n: int((home / "run" / f"{n}.pid").read_text()) for n in pids} == pids

        status = _run(["status"], env)
        assert status.returncode == 0, status.stderr
        ready = {line.split()[0] for line in status.stdout.splitlines() if " ready " in line}
        assert {"kafka", "redis"} <= ready
        assert (home / "logs" / "kafka.log").stat().st_size > 0
        assert (home / "logs" / "redis.log").stat().st_size > 0
    finally:
        third = _run(["down"], env)
        fourth = _run(["down"], env)
    assert third.returncode == 0, third.stderr
    assert "kafka: stopped" in third.stderr and "redis: stopped" in third.stderr
    assert fourth.returncode == 0, fourth.stderr
    assert "kafka: not running" in fourth.stderr and "redis: not running" in fourth.stderr
    assert _processes_mentioning(str(home)) == []
    assert not list((home / "run").glob("*.pid"))


@pytest.mark.unit
def test_stale_pid_file_is_never_signalled(tmp_path: Path) -> None:
    settings = Settings(paths={"home": tmp_path})
    settings.paths.pids.mkdir(parents=True)
    # A live process that is not ours (a pid reused after a reboot looks exactly like this).
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        for name in ("kafka", "redis"):
            (settings.paths.pids / f"{name}.pid").write_text(f"{stranger.pid}\n")
        assert services.kafka_down(settings) is False
        assert services.redis_down(settings) is False
        assert stranger.poll() is None
        assert not list(settings.paths.pids.glob("*.pid"))
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.unit
def test_bad_subcommand_exits_2_with_one_line() -> None:
    result = _run(["bogus"], dict(os.environ))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "bogus" in result.stderr


@pytest.mark.unit
def test_airflow_env_points_into_the_run_folder(settings: Settings) -> None:
    env = services.airflow_env(settings)
    assert Path(env["AIRFLOW_HOME"]) == settings.paths.home / "airflow"
    assert Path(env["AIRFLOW__CORE__DAGS_FOLDER"]) == PROJECT_ROOT / "dags"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")


@pytest.mark.unit
def test_kafka_up_refuses_a_port_held_by_another_server(tmp_path: Path) -> None:
    import socket

    from feedrank.errors import FeedrankError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = Settings(
            paths={"home": tmp_path},
            kafka={"port": port, "controller_port": port + 1, "ready_timeout_s": 5},
        )
        with pytest.raises(FeedrankError, match=f"{port} is in use"):
            services.kafka_up(settings)
    assert not (settings.paths.pids / "kafka.pid").exists()
