"""``feedrank serve`` refuses bad input with one line and a non-zero exit."""

from __future__ import annotations

import sys

import pytest

from feedrank import cli
from feedrank.config import get_settings

pytestmark = pytest.mark.unit


def _run(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["feedrank", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, capsys.readouterr().err


def test_bad_arguments_exit_2_with_one_line(monkeypatch, capsys) -> None:
    code, err = _run(monkeypatch, capsys, "serve", "--max-requests", "0")
    assert code == 2
    assert err.count("\n") == 1 and "--max-requests" in err


def test_serve_in_an_empty_run_folder_exits_1_with_one_line(monkeypatch, capsys, tmp_path) -> None:
    # No champion is not an error (serving falls back, see test_no_champion); no feature
    # store is.
    monkeypatch.setenv("FEEDRANK_PATHS__HOME", str(tmp_path))
    monkeypatch.setenv("FEEDRANK_SERVING__METRICS_PORT", "0")
    get_settings.cache_clear()
    try:
        code, err = _run(monkeypatch, capsys, "serve")
    finally:
        get_settings.cache_clear()
    assert code == 1
    assert err.count("\n") == 1 and "no online store" in err
