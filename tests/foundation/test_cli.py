"""The `feedrank` entry point: resolved config as YAML, one-line usage errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

FEEDRANK = str(Path(sys.executable).parent / "feedrank")


def _feedrank(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FEEDRANK, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.unit
def test_config_prints_the_resolved_yaml_with_env_overrides() -> None:
    result = _feedrank("config", FEEDRANK_PROFILE="redis", FEEDRANK_KAFKA__PORT="23456")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["profile"] == "redis"
    assert config["feast"]["online_store"] == "redis"
    assert config["kafka"]["port"] == 23456


@pytest.mark.unit
def test_bad_subcommand_exits_2_with_one_line() -> None:
    result = _feedrank("no-such-command")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("feedrank: error:")


@pytest.mark.unit
def test_unknown_profile_is_one_line_error() -> None:
    result = _feedrank("config", FEEDRANK_PROFILE="nope")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "nope" in result.stderr
