"""Online experiment maths: stable, balanced arms and intervals checked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from feedrank.experiment_analysis import compare_to_control, experiment_report, session_outcomes
from feedrank.experiment_design import assign_arm

pytestmark = pytest.mark.unit
ARMS = {"control": 0.5, "treatment": 0.5}


def test_assignment_is_stable_and_balanced_on_10k_users() -> None:
    first = [assign_arm(u, ARMS, "salt-a") for u in range(10_000)]
    again = [assign_arm(u, ARMS, "salt-a") for u in range(10_000)]
    assert first == again
    share = first.count("treatment") / len(first)
    assert abs(share - 0.5) <= 0.02
    reshuffled = [assign_arm(u, ARMS, "salt-b") for u in range(10_000)]
    assert 0.4 < np.mean(np.array(first) != np.array(reshuffled)) < 0.6


def test_three_arm_shares_follow_config() -> None:
    arms = {"control": 0.5, "treatment": 0.3, "challenger": 0.2}
    got = pd.Series([assign_arm(u, arms, "s") for u in range(20_000)]).value_counts(normalize=True)
    for arm, share in arms.items():
        assert abs(got[arm] - share) <= 0.02


def test_lift_and_intervals_match_hand_computed_example() -> None:
    control = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, sample var 5/3
    treatment = np.array([2.0, 4.0, 6.0, 8.0])  # mean 5.0, sample var 20/3
    got = compare_to_control(control, treatment)
    # By hand: diff = 2.5; se = sqrt(5/12 + 20/12) = 1.443376; Welch dof = 4.411765.
    se = np.sqrt(25 / 12)
    dof = (25 / 12) ** 2 / ((5 / 12) ** 2 / 3 + (20 / 12) ** 2 / 3)
    assert dof == pytest.approx(4.411765, abs=1e-6)
    half = stats.t.ppf(0.975, dof) * se
    assert got.diff.estimate == pytest.approx(2.5)
    assert (got.diff.low, got.diff.high) == pytest.approx((2.5 - half, 2.5 + half))
    # SciPy's own Welch interval agrees.
    welch = stats.ttest_ind(treatment, control, equal_var=False).confidence_interval(0.95)
    assert (got.diff.low, got.diff.high) == pytest.approx((welch.low, welch.high))
    # Relative lift = 5/2.5 - 1 = 1; delta-method se = sqrt(20/12/6.25 + 25/39.0625*5/12).
    lift_se = np.sqrt(0.533333333)
    assert got.lift.estimate == pytest.approx(1.0)
    assert got.lift.low == pytest.approx(1.0 - 1.959964 * lift_se, abs=1e-5)
    assert got.lift.high == pytest.approx(1.0 + 1.959964 * lift_se, abs=1e-5)


def test_session_outcomes_weight_engagements_and_count_negatives() -> None:
    impressions = pd.DataFrame(
        {"request_id": ["a", "a", "b", "c"], "arm": ["control", "control", "treatment", "control"]}
    )
    engagements = pd.DataFrame(
        {"request_id": ["a", "a", "b", "b"], "head": ["like", "reply", "negative", "click"]}
    )
    weights = {"like": 0.5, "reply": 13.5, "retweet": 1.0, "click": 11.0, "negative": -74.0}
    got = session_outcomes(impressions, engagements, weights).set_index("request_id")
    assert got.loc["a", "weighted_engagements"] == pytest.approx(14.0)
    assert got.loc["b", "weighted_engagements"] == pytest.approx(11.0)
    assert got.loc["c", "weighted_engagements"] == 0
    assert got.loc["b", "negative_actions"] == 1
    assert list(got["impressions"]) == [2, 1, 1]
    report = experiment_report(got.reset_index())
    assert report["arms"]["control"]["sessions"] == 2
    assert report["arms"]["treatment"]["engagement_rate"]["click"] == pytest.approx(1.0)


def test_report_without_control_sessions_is_refused() -> None:
    sessions = pd.DataFrame({"arm": ["treatment"], "weighted_engagements": [1.0]})
    with pytest.raises(ValueError, match="control"):
        experiment_report(sessions)


def _lake_with_two_arms(lake) -> None:
    import datetime as dt

    import pyarrow as pa

    from feedrank.lake import write_partitioned
    from feedrank.schemas import Engagement, Impression, table_schema

    t0 = dt.datetime(2026, 11, 5, 12, tzinfo=dt.UTC)
    impressions, engagements = [], []
    for r in range(40):
        arm = "control" if r % 2 == 0 else "treatment"
        impressions.append(
            Impression(
                request_id=f"r{r}",
                user_id=r,
                tweet_id=1000 + r,
                author_id=5,
                position=0,
                served_at=t0,
                model_version="v1",
                arm=arm,
            ).model_dump()
        )
        likes = 1 + (r % 3) + (2 if arm == "treatment" else 0)
        engagements += [
            Engagement(
                request_id=f"r{r}",
                user_id=r,
                tweet_id=1000 + r,
                author_id=5,
                head="like",
                engaged_at=t0 + dt.timedelta(seconds=5 + k),
            ).model_dump()
            for k in range(likes)
        ]
    for name, rows in (("impressions", impressions), ("engagements", engagements)):
        write_partitioned(name, pa.Table.from_pylist(rows, schema=table_schema(name)), lake)


def test_report_from_the_lake_through_the_cli(tmp_path, monkeypatch) -> None:
    import json
    import subprocess
    import sys

    _lake_with_two_arms(tmp_path / "lake")
    env = {**__import__("os").environ, "FEEDRANK_PATHS__HOME": str(tmp_path)}
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "feedrank.cli", "experiment", "report", "--start", "2026-11-05"]
    done = subprocess.run([*cmd, "--json", str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    treatment = report["arms"]["treatment"]["weighted_engagements"]
    # control sessions like 1,2,3,... (mean 2.0 over r%3); treatment gets 2 more likes (w=0.5).
    assert report["arms"]["control"]["sessions"] == 20
    assert treatment["diff_vs_control"]["estimate"] == pytest.approx(
        0.5
        * (
            np.mean([1 + (r % 3) + 2 for r in range(1, 40, 2)])
            - np.mean([1 + (r % 3) for r in range(0, 40, 2)])
        )
    )
    assert treatment["diff_vs_control"]["low"] > 0
    bad = subprocess.run([*cmd[:-1], "2026-13-01"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0
    assert len(bad.stderr.strip().splitlines()) == 1


def test_report_from_the_lake_keeps_only_the_given_requests(tmp_path) -> None:
    """A demo rerun on the same day reports its own sessions, not the earlier run's too."""
    from feedrank.experiment_analysis import report_from_lake

    lake = tmp_path / "lake"
    _lake_with_two_arms(lake)
    weights = {"like": 0.5, "reply": 13.5, "retweet": 1.0, "click": 11.0, "negative": -74.0}
    everything = report_from_lake(lake, ["2026-11-05"], weights)
    mine = {f"r{r}" for r in range(20, 40)}
    report = report_from_lake(lake, ["2026-11-05"], weights, request_ids=mine)
    assert everything["arms"]["control"]["sessions"] == 20
    assert report["arms"]["control"]["sessions"] == 10
    assert report["arms"]["treatment"]["sessions"] == 10
