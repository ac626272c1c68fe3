"""Paired counterfactual comparison: bootstrap maths and the expected outcome of one order."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.config import Settings, SimulatorConfig
from feedrank.experiment_analysis import compare_to_control, counterfactual_report
from feedrank.experiment_design import outcome_weights
from feedrank.feature_spec import model_features
from feedrank.simulator.engagement import true_probabilities
from feedrank.simulator.world import World
from serving.counterfactual import expected_outcome

pytestmark = pytest.mark.unit
COLUMNS = {name: i for i, name in enumerate(model_features())}


def test_paired_bootstrap_recovers_lift_and_share_with_a_narrow_interval() -> None:
    rng = np.random.default_rng(5)
    n = 600
    # Requests differ a lot (heavy-tailed), policies differ by a fixed factor plus noise.
    chrono = rng.lognormal(1.0, 1.0, n)
    values = {
        "chronological": chrono,
        "champion": chrono * (1.5 + 0.05 * rng.standard_normal(n)),
        "oracle": chrono * 2.0,
    }
    report = counterfactual_report(values, resamples=1_000)
    champion = report["champion"]
    true_lift = 100 * (values["champion"].mean() / chrono.mean() - 1)
    assert champion["lift_pct"] == pytest.approx(true_lift)
    assert champion["ci_low"] < 50.0 < champion["ci_high"]
    assert champion["share_ci_low"] < champion["share_of_oracle"] < champion["share_ci_high"]
    assert champion["share_of_oracle"] == pytest.approx(0.5, abs=0.01)
    assert champion["share_ci_high"] - champion["share_ci_low"] < 0.02
    assert report["oracle"]["share_of_oracle"] == pytest.approx(1.0)
    assert report["chronological"]["lift_pct"] == pytest.approx(0.0)
    # The same sessions split into two independent arms: the interval is far wider.
    half = n // 2
    unpaired = compare_to_control(chrono[:half], values["champion"][half:])
    assert 100 * (unpaired.lift.high - unpaired.lift.low) > 5 * (
        champion["ci_high"] - champion["ci_low"]
    )


def test_counterfactual_report_needs_baseline_ceiling_and_two_requests() -> None:
    with pytest.raises(ValueError, match="oracle"):
        counterfactual_report({"chronological": np.ones(5), "champion": np.ones(5)})
    with pytest.raises(ValueError, match="2 requests"):
        counterfactual_report({"chronological": np.ones(1), "oracle": np.ones(1)})


@pytest.mark.parametrize("world_fields", [{}, {"seed": 23, "topics": 6, "author_share": 0.3}])
def test_expected_outcome_is_the_viewed_true_engagement_of_the_served_order(
    settings: Settings, world_fields: dict
) -> None:
    config = SimulatorConfig.model_validate(
        {**settings.simulator.model_dump(), "users": 60, **world_fields}
    )
    world = World.build(config)
    user, now_s, device = 3, 1_764_590_400.0, 1
    authors = world.author_ids[:4]
    features = np.full((4, len(COLUMNS)), np.nan, dtype=np.float32)
    features[:, COLUMNS["tweet_topic"]] = [0, 1, 2, 3]
    features[:, COLUMNS["tweet_has_media"]] = [1, 0, 0, 1]
    features[:, COLUMNS["tweet_has_link"]] = [0, 0, 1, 0]
    features[:, COLUMNS["tweet_created_ts"]] = now_s - np.array([600, 3600, 7200, 60])
    features[2, COLUMNS["tweet_created_ts"]] = np.nan  # unknown to the feature store
    served = np.array([2, 0, 3, 1])
    weights = settings.ranking.weights
    weighted, negative = expected_outcome(
        world, user, now_s, device, served, features, authors, weights
    )
    # By hand: the unknown tweet takes slot 0 and earns nothing; the known ones are seen with
    # probability stay^slot and judged at positions 0, 1, 2 among the known ones.
    stay = 1.0 - 1.0 / world.view_depth_mean[user]
    known = np.array([0, 3, 1])
    f = features[known].astype(np.float64)
    probs = true_probabilities(
        world.inputs_from_attributes(
            np.full(3, user),
            authors[known],
            f[:, COLUMNS["tweet_topic"]].astype(int),
            f[:, COLUMNS["tweet_has_media"]],
            f[:, COLUMNS["tweet_has_link"]],
            f[:, COLUMNS["tweet_created_ts"]],
            np.full(3, now_s),
            np.full(3, device),
            np.arange(3.0),
        )
    )
    seen = stay ** np.array([1.0, 2.0, 3.0])
    expected = sum(w * (seen @ probs[h]) for h, w in outcome_weights(weights).items())
    assert weighted == pytest.approx(expected)
    assert negative == pytest.approx(seen @ probs["negative"])
    assert "negative" not in outcome_weights(weights)


def test_user_level_intervals_are_wider_than_session_level_when_users_differ() -> None:
    # Arms are assigned per user; here users differ (level and gain), each has 8 sessions.
    rng = np.random.default_rng(11)
    n_users, per_user = 150, 8
    users = np.repeat(np.arange(n_users), per_user)
    level = rng.lognormal(0.0, 1.0, n_users)[users]
    gain = rng.normal(1.5, 0.4, n_users)[users]
    chrono = level * rng.lognormal(0.0, 0.3, users.size)
    values = {"chronological": chrono, "champion": chrono * gain, "oracle": chrono * 2.5}

    def width(entry: dict) -> float:
        return entry["ci_high"] - entry["ci_low"]

    by_session = counterfactual_report(values)["champion"]
    by_user = counterfactual_report(values, users=users)["champion"]
    assert by_user["lift_pct"] == pytest.approx(by_session["lift_pct"])
    assert (by_user["units"], by_session["units"]) == (n_users, users.size)
    assert width(by_user) > 1.8 * width(by_session)
    # Realized arms: half of the users in each; whole users resampled within each arm.
    control, treatment = users < n_users // 2, users >= n_users // 2
    welch = compare_to_control(chrono[control], values["champion"][treatment])
    clustered = compare_to_control(
        chrono[control], values["champion"][treatment],
        control_users=users[control], treatment_users=users[treatment],
    )  # fmt: skip
    assert clustered.lift.estimate == pytest.approx(welch.lift.estimate)
    assert clustered.lift.high - clustered.lift.low > 1.8 * (welch.lift.high - welch.lift.low)
    # With one session per user the two units are the same: about the same interval.
    single = np.arange(users.size)
    one_each = counterfactual_report(values, users=single)["champion"]
    assert width(one_each) == pytest.approx(width(by_session), rel=0.01)
