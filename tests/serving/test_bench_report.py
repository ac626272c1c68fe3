"""``feedrank bench serving``'s report: the tables and the load-curve PNG from its figures."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving.latency_bench import _figures, _pause_figures, _pause_key, plot_curve, print_table

pytestmark = pytest.mark.unit

STAGES = ("decode", "hydrate", "light", "heavy", "rank", "encode_produce", "other")


def _point(rate: float, p99: float) -> dict[str, object]:
    return {
        "rate_rps": rate,
        "requests": int(rate * 10),
        "answered": int(rate * 10),
        "unanswered": 0,
        "p50_ms": p99 / 3,
        "p99_ms": p99,
        "throughput_rps": rate,
        "deadline_misses": 0,
        "degraded": 0.0,
        "degraded_count": 0,
        "heavy_rows_mean": 900.0,
        "heavy_pruned_for_aim": 0,
        "serve_cpu_ms_per_request": 16.0,
        "stage_cpu_ms_per_request": dict.fromkeys(STAGES, 16.0 / len(STAGES)),
        "bench_cpu_ms_per_request": 2.0,
        "broker_cpu_ms_per_request": 1.0,
        "machine_busy_share": 0.5,
        "serve_cpu_over_floor": 1.25,
        "non_model_cpu_ms_per_request": 3.0,
        "full_heavy_cpu_over_floor": 1.23,
        "p99_over_floor": p99 / 10,
    }


def test_report_prints_both_tables_and_draws_the_curve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    curve = [_point(25, 40.0), _point(50, 120.0), _point(100, 900.0)]
    figures = {
        **curve[1],
        "world": "synthetic",
        "candidates": 1000,
        "duration_s": 10.0,
        "servers": 2,
        "budget_ms": 300,
        "heavy_ranker_cap": 1000,
        "aim_ms": 100,
        "naive_p50_ms": 900.0,
        "fast_hydrate_p50_ms": 1.5,
        "model_floor_p50_ms": 10.0,
        "model_floor_cpu_ms": 13.0,
        "model_floor_rows": 1000,
        "load_curve": curve,
        "max_rate_p99_within_budget_rps": 50,
    }
    print_table(figures)
    out = capsys.readouterr().out
    assert "load curve" in out and "highest rate with p99 ≤ 300 ms: 50 req/s" in out
    png = tmp_path / "curve.png"
    plot_curve(figures, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pauses_are_read_from_the_servers_histograms() -> None:
    gc = "feedrank_serving_gc_pause_seconds"
    samples = [
        (f"{gc}_count", {"generation": "2"}, 5.0),
        (f"{gc}_sum", {"generation": "2"}, 0.1),
        (f"{gc}_bucket", {"generation": "2", "le": "0.01"}, 3.0),
        (f"{gc}_bucket", {"generation": "2", "le": "0.02"}, 4.0),  # not the bound: ignored
        ("feedrank_serving_stage_seconds_count", {"stage": "heavy"}, 9.0),  # not a pause
    ]
    delta: dict[str, float] = {}
    for name, labels, value in samples:
        if key := _pause_key(name, labels):
            delta[key] = value
    assert len(delta) == 3
    assert _pause_figures(delta) == {
        "gc_pause": {"2": {"count": 5.0, "mean_ms": 20.0, "total_ms": 100.0, "over_10ms": 2.0}}
    }


def test_the_slowest_answers_are_split_into_their_parts() -> None:
    start = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)

    def answer(backlog_ms: float) -> dict[str, object]:
        served = start + dt.timedelta(milliseconds=backlog_ms + 10)
        feed = SimpleNamespace(
            requested_at=start,
            served_at=served,
            degraded=False,
            deadline_missed=False,
            timings_ms={"backlog": backlog_ms, "fetch": 2.0, "queued": 1.0, "total": 7.0},
        )
        return {"feed": feed, "received": served.timestamp() + 0.003}

    answered = [answer(0.0) for _ in range(199)] + [answer(400.0)]
    delta = dict.fromkeys(
        (
            "feedrank_serving_heavy_rows_sum",
            "feedrank_serving_heavy_rows_count",
            "feedrank_serving_heavy_pruned_for_aim_total",
        ),
        0.0,
    )
    figures = _figures(answered, 200, start.timestamp(), delta)
    parts = figures["parts_ms"]
    # The slowest 1 % (two answers): one waited 400 ms behind the loop, one did not.
    assert parts["backlog"]["slowest_1pct_mean"] == pytest.approx(200.0)
    assert parts["fetch"]["slowest_1pct_mean"] == pytest.approx(2.0)
    assert parts["delivery"]["p50"] == pytest.approx(3.0, abs=0.01)
    assert parts["backlog"]["p50"] == 0.0
