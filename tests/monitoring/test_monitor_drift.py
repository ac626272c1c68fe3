"""Drift: PSI per feature between training data and served vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feedrank.feature_spec import model_features
from jobs.monitor_drift import DRIFT_EXEMPT, drift_report


def _frame(seed: int, n: int = 2_000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({name: rng.normal(10.0, 2.0, n) for name in model_features()})


@pytest.mark.unit
def test_same_distribution_is_not_drift():
    report = drift_report(_frame(1), _frame(2), psi_alert=0.2)

    assert report["status"] == "ok" and report["breaches"] == []
    assert max(report["psi"].values()) < 0.05


@pytest.mark.unit
def test_identical_frames_have_zero_psi():
    frame = _frame(1)
    report = drift_report(frame, frame.copy(), psi_alert=0.2)

    assert set(report["psi"].values()) == {0.0}


@pytest.mark.unit
def test_a_shifted_feature_is_flagged_and_named():
    served = _frame(2)
    served["user_like_rate_7d"] += 2.0  # one standard deviation
    served[DRIFT_EXEMPT[0]] += 2.0  # calendar-bound: reported, never a breach
    report = drift_report(_frame(1), served, psi_alert=0.2)

    assert report["breaches"] == ["user_like_rate_7d"]
    assert report["status"] == "breach"
    assert report["psi"]["user_like_rate_7d"] > 0.2
    assert report["psi"][DRIFT_EXEMPT[0]] > 0.2
    others = [
        v for n, v in report["psi"].items() if n not in ("user_like_rate_7d", DRIFT_EXEMPT[0])
    ]
    assert max(others) < 0.05


@pytest.mark.unit
def test_missing_values_are_left_out_and_sparse_features_skipped():
    training, served = _frame(1), _frame(2)
    served.loc[: len(served) // 2, "ua_te_like"] = np.nan  # half missing, same distribution
    served["ua_te_click"] = np.nan
    report = drift_report(training, served, psi_alert=0.2)

    assert report["breaches"] == []
    assert report["null_share"]["served"]["ua_te_like"] == pytest.approx(0.5, abs=0.01)
    assert report["psi"]["ua_te_click"] is None
    assert "ua_te_click" in report["skipped"]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_training_sample_undoes_negative_downsampling(spark, tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.training_data import keep_hash_py

    rate, n = 0.5, 400
    ids = [(f"req-{i // 10}", i) for i in range(n)]
    columns = {"request_id": [r for r, _ in ids], "tweet_id": [t for _, t in ids]}
    columns.update({name: [float(i) for i in range(n)] for name in model_features()})
    (tmp_path / "train").mkdir()
    pq.write_table(pa.table(columns), tmp_path / "train" / "part-00000.parquet")
    manifest = {"negative_keep_rate": rate, "rows": {"train": n, "validation": 0}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    from jobs.monitor_drift import training_sample

    sample = training_sample(spark, tmp_path)
    # Exactly the rows the job would have kept had every row been a negative.
    expected = sorted(float(i) for i, (r, t) in enumerate(ids) if keep_hash_py(r, t) < rate)
    assert sorted(sample["user_like_rate_7d"].tolist()) == expected
    assert 0.35 * n < len(sample) < 0.65 * n
    assert list(sample.columns) == model_features()


@pytest.mark.unit
def test_every_drift_exemption_is_a_model_feature():
    """An exemption for a feature the model no longer has hides nothing and misleads readers."""
    assert set(DRIFT_EXEMPT) <= set(model_features())
