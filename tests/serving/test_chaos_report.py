"""The chaos report's arithmetic on a hand-made per-request record (the run itself is
``make chaos``, not part of ``make test``)."""

from __future__ import annotations

import pytest

from serving.chaos_bench import chaos_report

pytestmark = pytest.mark.unit


def _row(sent: float, latency_ms: float | None, answers: int = 1, **flags: bool) -> dict:
    received = None if latency_ms is None else sent + latency_ms / 1e3
    return {
        "requested_at": sent,
        "received": received,
        "answers": answers if received is not None else 0,
        "degraded": flags.get("degraded", False),
        "deadline_missed": flags.get("missed", False),
    }


FIGURES = {"rate_rps": 10.0, "candidates": 1000, "servers": 2, "p99_ms": 80.0}
EVENTS = {
    "scenario": "broker-kill",
    "fault": "kill -9 kafka-2 (leader of feed_requests-3), then restart",
    "broker": "kafka-2",
    "started_at": 100.0,
    "heal_at": 120.0,
    "ended_at": 130.0,
}


def test_counts_window_p99_and_timeline() -> None:
    rows = [
        _row(90.0, 50.0),  # before the fault
        _row(101.0, 4_000.0, missed=True, degraded=True),  # waited for the new leader
        _row(110.0, 60.0, answers=2),  # answered twice (redelivered)
        _row(129.0, 900.0, missed=True),  # the last late answer: received at 129.9
        _row(140.0, 40.0),  # after the window
    ]
    report = chaos_report({**FIGURES, "per_request": rows}, EVENTS, budget_ms=300)
    assert (report["sent"], report["answered"], report["lost"]) == (5, 5, 0)
    assert report["answered_twice"] == 1
    assert (report["budget_misses"], report["degraded"]) == (2, 1)
    assert report["fault_window_requests"] == 3 and report["fault_window_s"] == 30.0
    assert report["p99_fault_window_ms"] > 900.0
    assert report["last_late_answer_s"] == pytest.approx(29.9)
    assert report["scenario"] == "broker-kill" and "kafka-2" in report["fault"]
    timeline = {b["from_fault_s"]: b for b in report["timeline"]}
    assert sum(b["sent"] for b in timeline.values()) == 5
    assert timeline[0]["late"] == 1 and timeline[25]["late"] == 1 and timeline[-10]["late"] == 0


def test_recovery_ends_where_the_late_share_is_back_to_the_noise_before_the_fault() -> None:
    # 5% late before the fault; after it, 5 s all late, 5 s mostly late, then 1 late of 10
    # now and then: within the noise, so recovered 10 s after the fault.
    before = [_row(50.0 + 0.5 * i, 900.0 if i % 20 == 0 else 50.0) for i in range(100)]
    after = [
        _row(100.0 + 0.5 * i, 900.0 if i < 10 or (i < 20 and i % 2) or i % 10 == 5 else 50.0)
        for i in range(80)
    ]
    report = chaos_report({**FIGURES, "per_request": before + after}, EVENTS, budget_ms=300)
    assert report["late_share_before_fault"] == pytest.approx(0.05)
    assert report["recovery_s"] == 10.0
    assert report["last_late_answer_s"] > 30.0  # the old arithmetic: the noise's last late one


def test_latency_counts_from_when_a_request_was_due() -> None:
    # Sent 4 s late by a blocked load generator, answered 50 ms after: 4,050 ms late.
    row = {**_row(104.0, 50.0), "scheduled_at": 100.0}
    report = chaos_report({**FIGURES, "per_request": [_row(90.0, 50.0), row]}, EVENTS, 300)
    assert report["p99_fault_window_ms"] == pytest.approx(4050.0)
    assert {b["from_fault_s"]: b["late"] for b in report["timeline"]}[0] == 1


def test_a_lost_request_after_the_kill_means_not_recovered() -> None:
    rows = [_row(90.0, 50.0), _row(105.0, None), _row(140.0, 40.0)]
    report = chaos_report({**FIGURES, "per_request": rows}, EVENTS, budget_ms=300)
    assert report["lost"] == 1 and report["answered"] == 2
    assert report["recovery_s"] is None


def test_nothing_late_after_the_kill_recovers_at_once() -> None:
    rows = [_row(90.0, 50.0), _row(105.0, 30.0), _row(140.0, 40.0)]
    report = chaos_report({**FIGURES, "per_request": rows}, EVENTS, budget_ms=300)
    assert report["recovery_s"] == 0.0 and report["lost"] == 0


def test_recovery_is_split_at_the_heal() -> None:
    # No noise before; late 0–5 s (the fault), normal until the heal at 20 s, late 25–30 s
    # (the restart's own disturbance).
    before = [_row(50.0 + 0.5 * i, 50.0) for i in range(100)]
    after = [_row(100.0 + 0.5 * i, 900.0 if i < 10 or 50 <= i < 60 else 50.0) for i in range(80)]
    report = chaos_report({**FIGURES, "per_request": before + after}, EVENTS, budget_ms=300)
    assert report["recovery_before_heal_s"] == 5.0
    assert report["recovery_after_heal_s"] == 10.0  # 30 s after the fault, 20 s the heal
    assert report["recovery_s"] == 30.0


def test_goals_per_scenario() -> None:
    before = [_row(50.0 + 0.5 * i, 50.0) for i in range(100)]
    # Late until 20 s after the kill, the heal: not recovered before the restart.
    stalled = [_row(100.0 + 0.5 * i, 900.0 if i < 40 else 50.0) for i in range(80)]
    report = chaos_report({**FIGURES, "per_request": before + stalled}, EVENTS, budget_ms=300)
    assert report["goals"] == {"nothing_lost": True, "recovered_within_30_s_of_the_kill": False}
    assert not report["passed"]
    quick = [_row(100.0 + 0.5 * i, 900.0 if i < 10 else 50.0) for i in range(80)]
    report = chaos_report({**FIGURES, "per_request": before + quick}, EVENTS, budget_ms=300)
    assert report["passed"]

    served_bad = [{**_row(105.0, 50.0), "model_version": "bad"}]
    events = {**EVENTS, "scenario": "corrupt-model", "bad_version": "bad"}
    report = chaos_report(
        {**FIGURES, "per_request": before + served_bad},
        {**events, "refused_by_servers": [1.0, 0.0]},
        budget_ms=300,
    )
    assert report["goals"]["bad_version_never_served"] is False
    assert report["goals"]["refused_by_every_server"] is False and not report["passed"]

    twice = [_row(105.0, 50.0, answers=2) for _ in range(3)]
    events = {**EVENTS, "scenario": "serve-kill", "uncommitted_window": 2}
    report = chaos_report({**FIGURES, "per_request": before + twice}, events, budget_ms=300)
    assert report["goals"]["duplicates_within_the_uncommitted_window"] is False
