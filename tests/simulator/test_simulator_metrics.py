"""feedrank.offline_metrics: RCE and the per-head metric set."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.offline_metrics import head_metrics, rce


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
