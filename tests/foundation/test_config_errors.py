"""Errors that name the setting: one line per wrong field, exit 2; a crash names its log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from feedrank.cli_runner import validation_lines
from feedrank.config import Settings

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


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.stdout == ""
    return result.stderr.strip().splitlines()


@pytest.mark.unit
def test_bad_env_value_names_the_setting_and_the_value() -> None:
    result = _feedrank("config", FEEDRANK_KAFKA__PORT="abc")
    assert result.returncode == 2
    [line] = _error_lines(result)
    assert line.startswith("feedrank: config error: kafka.port: Input should be a valid integer")
    assert line.endswith("(got 'abc')")


@pytest.mark.unit
def test_one_line_per_wrong_field() -> None:
    result = _feedrank("config", FEEDRANK_KAFKA__PORT="abc", FEEDRANK_SERVING__BUDGET_MS="50")
    assert result.returncode == 2
    lines = _error_lines(result)
    assert len(lines) == 2
    assert any(line.startswith("feedrank: config error: kafka.port:") for line in lines)
    assert any(
        "serving.budget_ms: Input should be greater than or equal to 300 (got '50')" in line
        for line in lines
    )


@pytest.mark.unit
def test_misspelled_keys_are_named() -> None:
    field = _feedrank("config", FEEDRANK_KAFKA__PROT="1")
    assert field.returncode == 2
    assert _error_lines(field) == [
        "feedrank: config error: kafka.prot: Extra inputs are not permitted (got '1')"
    ]
    section = _feedrank("config", FEEDRANK_KAFKAA__PORT="1")
    assert section.returncode == 2
    [line] = _error_lines(section)
    assert line.startswith("feedrank: config error: FEEDRANK_KAFKAA__PORT: unknown section")


@pytest.mark.unit
def test_config_file_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "ops.yaml"
    path.write_text("kafka:\n  prot: 1\nserving:\n  budget_ms: 999\n")
    result = _feedrank("config", FEEDRANK_CONFIG_FILE=str(path))
    assert result.returncode == 2
    assert sorted(_error_lines(result)) == [
        "feedrank: config error: kafka.prot: Extra inputs are not permitted (got 1)",
        "feedrank: config error: serving.budget_ms: Input should be less than or equal to 400 "
        "(got 999)",
    ]


@pytest.mark.unit
def test_config_file_layers_over_the_profile_under_the_env(tmp_path: Path) -> None:
    path = tmp_path / "ops.yaml"
    path.write_text("simulator:\n  users: 500\n  days: 9\n")
    result = _feedrank(
        "config",
        FEEDRANK_PROFILE="redis",
        FEEDRANK_CONFIG_FILE=str(path),
        FEEDRANK_SIMULATOR__DAYS="3",
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["feast"]["online_store"] == "redis"  # the profile still applies
    assert config["simulator"]["users"] == 500  # the file over the profile's defaults
    assert config["simulator"]["days"] == 3  # the environment over the file


@pytest.mark.unit
def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "ops.yaml"
    path.write_text("kafka:\n  port: 1\n  topics: [a\n")
    result = _feedrank("config", FEEDRANK_CONFIG_FILE=str(path))
    assert result.returncode == 2
    [line] = _error_lines(result)
    assert line.startswith(f"feedrank: config error: {path}:4:1: invalid YAML")
    path.write_text("- just\n- a list\n")
    result = _feedrank("config", FEEDRANK_CONFIG_FILE=str(path))
    assert result.returncode == 2
    assert "expected a mapping of sections, got list" in result.stderr
    missing = _feedrank("config", FEEDRANK_CONFIG_FILE=str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2
    assert "absent.yaml: cannot read the configuration file" in missing.stderr


@pytest.mark.unit
def test_lines_come_from_pydantic_error_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDRANK_SIMULATOR__USERS", "3")
    monkeypatch.setenv("FEEDRANK_RANKING__WEIGHTS", '{"like": 1.0}')
    with pytest.raises(ValidationError) as caught:
        Settings()
    lines = validation_lines(caught.value)
    assert "simulator.users: Input should be greater than or equal to 10 (got '3')" in lines
    # A check over a whole section names the section, without dumping its value.
    [weights] = [line for line in lines if line.startswith("ranking:")]
    assert "must name exactly the heads" in weights and "got" not in weights


@pytest.mark.unit
def test_unexpected_exception_is_one_line_and_a_log(tmp_path: Path) -> None:
    # A file where the embedded MLflow store's folder should be: an error no code expects.
    (tmp_path / "mlflow").write_text("a file where the tracking store's folder should be")
    result = _feedrank("models", FEEDRANK_PATHS__HOME=str(tmp_path))
    assert result.returncode == 1
    [line] = _error_lines(result)
    log = tmp_path / "logs" / "feedrank-errors.log"
    assert line.startswith("feedrank: error: unexpected FileExistsError:")
    assert line.endswith(f"(traceback in {log})")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "FileExistsError" in text
