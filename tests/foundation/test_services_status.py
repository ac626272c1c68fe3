"""`make status` lists every service feedrank can run, including the ones started without a
pid file (`feedrank serve`, `feedrank stream-features`), and only this run folder's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from feedrank.config import Settings
from feedrank.services import status
from feedrank.services.process import feedrank_processes

pytestmark = pytest.mark.unit


def _fake_feedrank(tmp_path: Path, subcommand: str, home: Path) -> subprocess.Popen:
    """A live process whose command line is ``<python> .../feedrank <subcommand>``."""
    script = tmp_path / "feedrank"
    script.write_text("import time\ntime.sleep(60)\n")
    return subprocess.Popen(
        [sys.executable, str(script), subcommand],
        env={"FEEDRANK_PATHS__HOME": str(home), "PATH": "/usr/bin:/bin"},
    )


def test_status_finds_this_run_folders_serve_process_only(
    settings: Settings, tmp_path: Path
) -> None:
    ours = _fake_feedrank(tmp_path, "serve", settings.paths.home)
    theirs = _fake_feedrank(tmp_path, "serve", tmp_path / "another-run-folder")
    try:
        assert feedrank_processes(settings, "serve") == [ours.pid]
        assert feedrank_processes(settings, "stream-features") == []
        report = status(settings)
        assert report["serve"]["pid"] == ours.pid
        assert report["stream-features"]["pid"] is None
        assert {"kafka", "redis", "spark-master", "airflow", "serve", "stream-features"} <= set(
            report
        )
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()
