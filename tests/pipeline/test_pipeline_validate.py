"""Validation gate: five injected faults are caught; clean data across seeds raises nothing."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import synthetic_lake
from pipeline_helpers import END, START, settings_at

from feedrank import lake
from feedrank.errors import FeedrankError
from feedrank.exporter import read_outcomes
from feedrank.feature_spec import VIEWS
from jobs import validate
from jobs.validate import check_partition, gate, live_rows, psi, validate_date, view_ranges

DAY0 = dt.date(2026, 11, 1)
CHECKED = DAY0 + dt.timedelta(days=2)


def _world(seed: int) -> dict[str, list[dict]]:
    return synthetic_lake.generate_world(DAY0, 3, users=80, seed=seed, candidates=6)


def _on_day(rows: list[dict], column: str, day: dt.date) -> list[dict]:
    return [r for r in rows if r[column].date() == day]


def _null_burst(world):  # position is a required column; written as the broken writer would
    for row in _on_day(world["impressions"], "served_at", CHECKED)[::8]:
        row["position"] = None


def _out_of_range(world):
    for row in _on_day(world["impressions"], "served_at", CHECKED)[:3]:
        row["position"] = -4


def _new_category(world):
    requests = _on_day(world["feed_requests"], "requested_at", CHECKED)
    for row in requests[: max(1, len(requests) // 20)]:
        row["device"] = "smartwatch"


def _label_collapse(world):
    likes = [e for e in _on_day(world["engagements"], "engaged_at", CHECKED) if e["head"] == "like"]
    dropped = {id(e) for e in likes[: int(len(likes) * 0.8)]}
    world["engagements"] = [e for e in world["engagements"] if id(e) not in dropped]


FAULTS = {
    "null_burst": (_null_burst, "null rate in impressions.position"),
    "out_of_range": (_out_of_range, "out of range in impressions.position"),
    "new_category": (_new_category, "new category in feed_requests.device"),
    "label_collapse": (_label_collapse, "label rate in labels.like"),
}


def _write(settings, world, drop_column: tuple[str, str] | None = None) -> None:
    broken = [r for r in world["impressions"] if r["position"] is None]
    if broken:  # the contract writer refuses nulls in a required column: bypass it
        world = {**world, "impressions": [r for r in world["impressions"] if r not in broken]}
    synthetic_lake.write_world(settings.paths.lake, world)
    if broken:
        path = lake.partition_dir(settings.paths.lake, "impressions", CHECKED) / (
            "part-00000.parquet"
        )
        good = pq.read_table(path)
        schema = pa.schema([f.with_nullable(True) for f in good.schema])
        pq.write_table(
            pa.concat_tables([good.cast(schema), pa.Table.from_pylist(broken, schema=schema)]), path
        )
    if drop_column:
        table, column = drop_column
        path = lake.partition_dir(settings.paths.lake, table, CHECKED) / "part-00000.parquet"
        pq.write_table(pq.read_table(path).drop_columns([column]), path)


@pytest.mark.unit
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_gate_catches_injected_fault(settings, tmp_path, fault):
    cfg = settings_at(settings, tmp_path)
    world = _world(seed=11)
    inject, expected = FAULTS[fault]
    inject(world)
    _write(cfg, world)
    with pytest.raises(FeedrankError, match=expected.replace(".", r"\.")):
        gate(cfg, CHECKED)
    report = json.loads((cfg.paths.reports / "validate" / f"{CHECKED}.json").read_text())
    assert report["ok"] is False
    assert any(expected in line for line in report["findings"])


@pytest.mark.unit
def test_gate_catches_dropped_column(settings, tmp_path):
    cfg = settings_at(settings, tmp_path)
    _write(cfg, _world(seed=12), drop_column=("feed_requests", "device"))
    with pytest.raises(FeedrankError, match=r"schema in feed_requests\.device: column missing"):
        gate(cfg, CHECKED)
    # The outcome Prometheus scrapes (feedrank batch-metrics), written before the refusal.
    failures = read_outcomes(cfg)["feedrank_batch_validation_failures"]["samples"]
    assert failures == [[{"kind": "lake"}, 1]]


@pytest.mark.unit
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gate_is_quiet_on_clean_data(settings, tmp_path, seed):
    cfg = settings_at(settings, tmp_path)
    _write(cfg, _world(seed))
    for day in (DAY0 + dt.timedelta(days=1), CHECKED):
        reports, path = validate_date(cfg, day)
        assert [f.line() for r in reports for f in r.findings] == []
        # Drift was actually measured (not skipped for lack of rows).
        assert any(r.psi for r in reports)
        assert json.loads(path.read_text())["ok"] is True


@pytest.mark.unit
def test_stream_tombstones_are_not_nulls_but_a_null_beside_a_count_is(settings):
    """A stream view closes each burst with a tombstone (every counter null): expected, so
    the null-rate limit applies to the other rows, where a counter must not be null."""
    view = "tweet_realtime"
    at = dt.datetime(2026, 11, 3, 10, tzinfo=dt.UTC)

    def table(counters: list[tuple[int | None, int | None]]) -> pa.Table:
        rows = [
            {
                "tweet_id": i,
                "event_timestamp": at,
                "created_timestamp": at,
                "tweet_engagements_30m": n30,
                "tweet_engagements_1h": n60,
            }
            for i, (n30, n60) in enumerate(counters)
        ]
        return pa.Table.from_pylist(rows, schema=lake.feature_table_schema(view))

    def null_findings(counters: list[tuple[int | None, int | None]]) -> list[str]:
        report = check_partition(
            view,
            table(counters),
            None,
            lake.feature_table_schema(view),
            settings.monitoring,
            view_ranges(view),
            enforce_drift=False,
        )
        return [f.line() for f in report.findings if f.check == "null rate"]

    live = [(1, 2), (0, 1), (3, 3)]
    assert null_findings([*live, (None, None)]) == []  # 1 row in 4 is a tombstone
    assert null_findings([*live, (None, 1)]) == [
        "null rate in tweet_realtime.tweet_engagements_30m: 25.0% null (limit 5.0%)"
    ]


@pytest.mark.unit
def test_an_all_null_row_is_a_tombstone_only_in_a_view_entities_can_leave():
    """Daily views whose entities leave (a quiet pair, an old tweet) have tombstones like
    the stream views; in any other view an all-null row is nulls, and is checked."""
    assert any(v.leaves and v.kind == "daily" for v in VIEWS.values())
    for name, view in VIEWS.items():
        frame = pd.DataFrame(
            [dict.fromkeys(view.feature_names), dict.fromkeys(view.feature_names, 1)]
        )
        assert len(live_rows(name, frame)) == (1 if view.leaves else 2), name


@pytest.mark.integration
def test_gate_is_quiet_on_the_pipeline_worlds_stream_tables(pipeline_run):
    cfg = pipeline_run.settings
    views = [name for name, v in VIEWS.items() if v.kind == "stream"]
    for day in (START, END):
        reports, _ = validate_date(cfg, day, views, kind="features")
        assert [r.dataset for r in reports] == views
        assert [f.line() for r in reports for f in r.findings] == []


@pytest.mark.unit
def test_psi_is_zero_for_same_and_large_for_shifted_data():
    base = pa.array(range(1000)).to_numpy().astype(float)
    assert psi(base, base) == pytest.approx(0.0, abs=1e-12)
    assert psi(base + 600, base) > 1.0


@pytest.mark.unit
def test_cli_validate_fails_with_one_line(settings, tmp_path):
    cfg = settings_at(settings, tmp_path)
    world = _world(seed=13)
    _new_category(world)
    _write(cfg, world)
    feedrank = str(Path(sys.executable).parent / "feedrank")
    env = {**os.environ, "FEEDRANK_PATHS__HOME": str(tmp_path)}
    proc = subprocess.run(
        [feedrank, "validate", "--date", CHECKED.isoformat()],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "new category in feed_requests.device" in proc.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    "args",
    [
        ["validate", "--date", "2026-13-01"],
        ["features", "--start", "2026-11-03", "--end", "2026-11-01"],
        ["training-data", "--start", "yesterday", "--end", "2026-11-01"],
    ],
)
def test_cli_bad_dates_exit_nonzero_with_one_line(monkeypatch, capsys, args):
    from feedrank import cli

    monkeypatch.setattr(sys, "argv", ["feedrank", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("feedrank: error:")


# ----------------------------------------------- consecutive days on one run folder (issue 32)


def _feature_row(view: str, day: dt.date) -> pa.Table:
    """One plausible row of ``view``'s snapshot of ``day`` (valid from the next midnight)."""
    valid_from = lake.midnight(day + dt.timedelta(days=1))
    schema = lake.feature_table_schema(view)
    row = {
        f.name: valid_from
        if pa.types.is_timestamp(f.type)
        else (1 if f.name.endswith("_id") else 0)
        for f in schema
    }
    return pa.Table.from_pylist([row], schema=schema)


def _write_features(cfg, day: dt.date) -> None:
    """Feature tables of ``day``, as yesterday's retrain run left them."""
    for view in VIEWS:
        folder = lake.partition_dir(cfg.paths.features, view, day)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(_feature_row(view, day), folder / "part-00000.parquet")


@pytest.mark.unit
def test_lake_gate_passes_on_consecutive_days_of_one_run_folder(settings, tmp_path):
    """The retrain DAG's order on one run folder: day 1 gate → day 1 features → day 2 gate.

    Before the split, day 2's gate also checked the feature tables of day 2, which day 2's
    ``features`` task had not built yet, against day 1's: "missing partition" for every view.
    """
    cfg = settings_at(settings, tmp_path)
    _write(cfg, _world(seed=1))
    day1, day2 = DAY0 + dt.timedelta(days=1), CHECKED
    gate(cfg, day1)
    _write_features(cfg, day1)  # yesterday's run built the feature tables of its day
    path = gate(cfg, day2)
    report = json.loads(path.read_text())
    assert report["ok"] is True and report["kind"] == "lake"
    checked = {d["dataset"] for d in report["datasets"]}
    assert {"feed_requests", "impressions", "engagements", "labels"} <= checked
    assert not checked & set(VIEWS)
    # A partition genuinely missing from the lake still fails the gate.
    for part in lake.partition_dir(cfg.paths.lake, "feed_requests", day2).iterdir():
        part.unlink()
    lake.partition_dir(cfg.paths.lake, "feed_requests", day2).rmdir()
    with pytest.raises(FeedrankError, match=r"missing partition in feed_requests"):
        gate(cfg, day2)


@pytest.mark.unit
def test_feature_gate_checks_a_day_against_the_day_before(settings, tmp_path):
    cfg = settings_at(settings, tmp_path)
    day1, day2 = DAY0 + dt.timedelta(days=1), CHECKED
    _write_features(cfg, day1)
    # Day 1 has no day before: nothing to compare, nothing wrong.
    assert json.loads(gate(cfg, day1, kind="features").read_text())["kind"] == "features"
    # Day 2 not built while day 1 was: every view is missing (the report says which).
    with pytest.raises(FeedrankError) as info:
        gate(cfg, day2, kind="features")
    message = str(info.value)
    assert message.startswith(f"{validate.GATE_FAILED} {day2} (feature tables): missing partition")
    assert f"(+{len(VIEWS) - 1} more)" in message
    report_file = validate.report_path(cfg, day2, "features")
    assert report_file.parent.name == "features" and report_file.is_file()
    # Built: it passes; broken (a feature column dropped): it fails on the schema.
    _write_features(cfg, day2)
    gate(cfg, day2, kind="features")
    view = next(iter(VIEWS))
    path = lake.partition_dir(cfg.paths.features, view, day2) / "part-00000.parquet"
    dropped = VIEWS[view].feature_names[0]
    pq.write_table(pq.read_table(path).drop_columns([dropped]), path)
    with pytest.raises(FeedrankError, match=rf"schema in {view}\.{dropped}: column missing"):
        gate(cfg, day2, kind="features")
    # The lake gate of the same day never looks at feature tables.
    with pytest.raises(FileNotFoundError, match="no lake partitions"):
        gate(cfg, day2)


@pytest.mark.unit
def test_a_nullable_column_is_judged_against_the_day_before_only():
    """A rate is null where it has no denominator yet: on a table's first day there is no
    baseline for that share, from the second day on it may not grow by more than the limit."""
    view = "user_engagement_daily"
    schema = lake.feature_table_schema(view)
    rate = "user_like_rate_1d"
    assert rate not in validate.required_columns(view, schema)

    def table(null_every: int) -> pa.Table:
        row = _feature_row(view, DAY0).to_pylist()[0]
        rows = [
            {**row, "user_id": i, rate: None if i % null_every == 0 else 0.1} for i in range(40)
        ]
        return pa.Table.from_pylist(rows, schema=schema)

    def findings(current: pa.Table, previous: pa.Table | None) -> list[str]:
        report = check_partition(
            view, current, previous, schema, validate.MonitoringConfig(), view_ranges(view)
        )
        return [f.line() for f in report.findings]

    assert findings(table(4), None) == []  # 25% null on the first day: no baseline
    assert findings(table(4), table(4)) == []
    assert findings(table(2), table(4)) == [f"null rate in {view}.{rate}: 50.0% null (limit 30.0%)"]
