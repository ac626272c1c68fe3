"""feedrank.offline_metrics: RCE, the per-head metric set and calibration by decile."""

from __future__ import annotations

import math

import numpy as np
import pytest

from feedrank.offline_metrics import calibration_deciles, head_metrics, max_decile_error, rce


@pytest.mark.unit
def test_rce_is_zero_for_the_base_rate_and_positive_for_signal() -> None:
    rng = np.random.default_rng(0)
    p_true = rng.uniform(0.01, 0.3, 50_000)
    y = rng.random(50_000) < p_true
    assert rce(y, np.full(len(y), y.mean())) == pytest.approx(0.0, abs=1e-9)
    assert rce(y, p_true) > 5.0
    assert rce(y, 1.0 - p_true) < 0.0
    assert np.isnan(rce(np.zeros(10), np.full(10, 0.1)))


@pytest.mark.unit
def test_head_metrics_reports_every_metric() -> None:
    y = np.array([0, 0, 1, 1])
    metrics = head_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert metrics["roc_auc"] == 1.0 and metrics["pr_auc"] == 1.0
    assert metrics["calibration"] == pytest.approx(1.0)
    assert metrics["positive_rate"] == 0.5 and metrics["rows"] == 4
    with pytest.raises(ValueError, match="differ in length"):
        head_metrics(y, np.array([0.5]))


# Positives per 4,000 impressions in ten prediction groups: each group ~1.5x the one below,
# so a group's predictions raised by 20 % stay inside its own decile.
GROUP_POSITIVES = (8, 16, 28, 44, 68, 104, 156, 236, 356, 536)
GROUP_IMPRESSIONS = 4_000


def down_sampled_groups(scale_group: int | None = None) -> tuple[np.ndarray, ...]:
    """Labels, predictions and repeats of ten groups whose prediction is their exact rate.

    Negatives are stored at a keep-rate of 1/4 (each counts 4 times), positives all kept,
    as in the training data. ``scale_group``'s predictions are 20 % above its rate.
    """
    y, p, repeats = [], [], []
    for k, positives in enumerate(GROUP_POSITIVES):
        rate = positives / GROUP_IMPRESSIONS
        q = rate * (1.2 if k == scale_group else 1.0)
        negatives_stored = (GROUP_IMPRESSIONS - positives) // 4
        y += [1.0] * positives + [0.0] * negatives_stored
        p += [q] * (positives + negatives_stored)
        repeats += [1] * positives + [4] * negatives_stored
    return np.array(y), np.array(p), np.array(repeats)


@pytest.mark.unit
def test_calibration_deciles_of_a_calibrated_set_have_no_error() -> None:
    y, p, repeats = down_sampled_groups()
    deciles = calibration_deciles(y, p, repeats)
    assert [d["impressions"] for d in deciles] == [GROUP_IMPRESSIONS] * 10
    assert [d["positives"] for d in deciles] == list(GROUP_POSITIVES)
    assert max_decile_error(deciles, min_impressions=1_000) == pytest.approx(0.0, abs=1e-12)
    # The same rows without undoing the down-sampling look badly calibrated.
    assert max_decile_error(calibration_deciles(y, p), min_impressions=100) > 0.5
    # No decile has 5,000 impressions: nothing to judge.
    assert max_decile_error(deciles, min_impressions=5_000) is None


@pytest.mark.unit
def test_calibration_deciles_catch_one_decile_20_percent_too_high() -> None:
    y, p, repeats = down_sampled_groups(scale_group=6)
    deciles = calibration_deciles(y, p, repeats)
    errors = [d["relative_error"] for d in deciles]
    assert errors[6] == pytest.approx(1 - 1 / 1.2)  # observed is 1/1.2 of the predicted rate
    assert deciles[6]["predicted"] == pytest.approx(1.2 * deciles[6]["observed"])
    assert max(errors[:6] + errors[7:]) == pytest.approx(0.0, abs=1e-12)
    assert max_decile_error(deciles, min_impressions=1_000) > 0.05
    # 156 positives where 187.2 are predicted: 2.3 binomial standard deviations.
    assert max_decile_error(deciles, 1_000, key="z") == pytest.approx(
        31.2 / math.sqrt(4_000 * 0.0468 * (1 - 0.0468))
    )
    with pytest.raises(ValueError, match="differ in length"):
        calibration_deciles(y, p, repeats[:-1])
