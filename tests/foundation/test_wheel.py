"""The wheel works outside the checkout: built, installed with [serve] into a fresh venv.

Offline on purpose: ``uv sync`` (``make setup``) has already put every locked wheel into uv's
cache, so the fresh venv is installed from there (``--offline``), pinned to ``uv.lock``'s
versions through ``uv export --format pylock.toml``; nothing is fetched and the install takes
seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from feedrank.config import PROJECT_ROOT

NOT_FOR_SERVE = ("pyspark", "airflow", "matplotlib")


def _uv() -> str:
    found = shutil.which("uv") or str(PROJECT_ROOT / ".cache" / "uv-venv" / "bin" / "uv")
    assert Path(found).exists(), "uv not found: run `make setup`"
    return found


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.unit
def test_wheel_with_serve_extra_runs_outside_the_checkout(tmp_path: Path) -> None:
    uv = _uv()
    # No FEEDRANK_* of the test session: the installed defaults are what is checked.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEEDRANK_", "VIRTUAL_ENV"))}
    env |= {"UV_PYTHON_DOWNLOADS": "never", "UV_PYTHON": "python3.11"}
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()

    # sdist first, then the wheel from it (uv build's default): no build/ left in the checkout.
    _run([uv, "build", "--offline", "--out-dir", str(dist)], PROJECT_ROOT, env)
    [wheel] = dist.glob("feedrank-*.whl")
    # pylock.toml names each locked wheel's URL, which uv's cache holds from `uv sync`; a
    # requirements file (name==version) would need the index pages too, and offline those are
    # cached only for packages some earlier resolution happened to look up.
    requirements = tmp_path / "pylock.serve.toml"
    export = [uv, "export", "--frozen", "--no-dev", "--extra", "serve", "--no-emit-project"]
    _run([*export, "--format", "pylock.toml", "-q", "-o", str(requirements)], PROJECT_ROOT, env)
    _run([uv, "venv", "-q", str(venv)], tmp_path, env)
    python = str(venv / "bin" / "python")
    install = [uv, "pip", "install", "-q", "--offline", "--python", python]
    _run([*install, "-r", str(requirements)], tmp_path, env)
    _run([*install, "--no-deps", str(wheel)], tmp_path, env)
    # Everything [serve] declares is installed: nothing missing, nothing conflicting.
    _run([uv, "pip", "check", "-q", "--python", python], tmp_path, env)

    # The serve extra brings neither Spark nor Airflow nor matplotlib.
    for module in NOT_FOR_SERVE:
        probe = subprocess.run([python, "-c", f"import {module}"], cwd=work, check=False)
        assert probe.returncode != 0, f"{module} installed by feedrank[serve]"
    where = _run([python, "-c", "import feedrank; print(feedrank.__file__)"], work, env)
    assert str(venv) in where.stdout and str(PROJECT_ROOT) not in where.stdout

    feedrank = str(venv / "bin" / "feedrank")
    version = _run([feedrank, "--version"], work, env)
    assert version.stdout.strip().startswith("feedrank 0.")
    config = yaml.safe_load(_run([feedrank, "config"], work, env).stdout)
    assert config["profile"] == "local"
    # Outside a checkout the run folder is ./var of the working directory.
    assert config["paths"]["home"] == str(work / "var")
    # The profiles are package data.
    redis = yaml.safe_load(
        _run([feedrank, "config"], work, env | {"FEEDRANK_PROFILE": "redis"}).stdout
    )
    assert redis["feast"]["online_store"] == "redis"
    _run([feedrank, "serve", "--help"], work, env)
