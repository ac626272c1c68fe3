"""``feedrank simulate`` through the real console entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feedrank.lake import WATERMARKS

FEEDRANK = [sys.executable, "-c", "from feedrank.cli import main; main()"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEEDRANK, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )


@pytest.mark.unit
def test_simulate_writes_a_lake_and_prints_its_summary(tmp_path: Path) -> None:
    done = _run(
        "simulate",
        "--days",
        "1",
        "--users",
        "60",
        "--candidates",
        "20",
        "--seed",
        "5",
        "--out",
        str(tmp_path),
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["seed"] == 5 and summary["rows"]["impressions"] > 0
    assert (tmp_path / "_manifest.json").is_file()
    tables = ["users", "tweets", "follows", "feed_requests", "impressions", "engagements", "oracle"]
    # The tables, and each table's landed-through mark (the retrain DAG's sensor reads them).
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted([*tables, WATERMARKS])
    assert sorted(p.stem for p in (tmp_path / WATERMARKS).iterdir()) == sorted(tables)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--days", "0"], 2, "--days"),
        (["--rate", "5"], 1, "need --live"),
        (["--live", "--days", "2"], 1, "apply to backfills"),
        (["--start-date", "2026-02-30", "--users", "20"], 1, "is not YYYY-MM-DD"),
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line(
    args: list[str], code: int, message: str
) -> None:
    done = _run("simulate", *args)
    assert done.returncode == code
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


@pytest.mark.unit
def test_progress_into_a_log_is_plain_lines(tmp_path: Path) -> None:
    """Not on a terminal (a log file, a pipe), the progress bar writes a few whole lines with
    its final state instead of thousands of carriage-return redraws."""
    done = subprocess.run(
        [
            *FEEDRANK,
            "simulate",
            *("--days", "2", "--users", "40", "--candidates", "20"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,  # bytes: text mode would turn every carriage return into \n
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"\r" not in done.stderr
    bars = [line for line in done.stderr.decode().splitlines() if line.startswith("simulate:")]
    assert bars and "100%" in bars[-1] and len(bars) <= 5, done.stderr
