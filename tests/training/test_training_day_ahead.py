"""A model that means the same on every day: the calendar, the unlearned columns and the
day-ahead calibration (the chain on each day of a week: test_training_calendar.py)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from feedrank import feature_spec
from feedrank.config import HEADS, Settings
from feedrank.context import context_features, days_to_nearest_holiday, holidays_between
from feedrank.model import DayAheadCalibration, booster_features, head_probabilities, recalibrate
from feedrank.model_files import load_model

pytestmark = pytest.mark.unit


def _ts(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC).timestamp()


def test_holiday_calendar_has_no_end_year() -> None:
    days = [
        dt.date(2026, 12, 24),
        dt.date(2041, 12, 26),
        dt.date(2077, 1, 2),
        dt.date(2099, 12, 30),
    ]
    np.testing.assert_array_equal(
        days_to_nearest_holiday(np.array([_ts(d) for d in days])), [0, 1, 1, 1]
    )
    assert dt.date(2088, 11, 25) in holidays_between(dt.date(2088, 11, 1), dt.date(2088, 11, 30))
    assert np.isnan(days_to_nearest_holiday(np.array([np.nan, _ts(days[0])]))[0])


def test_context_has_no_day_of_week_and_matches_the_contract() -> None:
    ctx = context_features(np.array([_ts(dt.date(2026, 12, 6))]), 0, 0.0, 20)
    assert list(ctx) == [f.name for f in feature_spec.CONTEXT_FEATURES]
    assert "ctx_day_of_week" not in feature_spec.model_features()
    assert ctx["ctx_is_weekend"][0] == 1.0  # a Sunday


def test_unlearned_columns_are_in_the_matrix_but_not_learned() -> None:
    assert "tweet_created_ts" in feature_spec.model_features()
    assert "tweet_created_ts" not in feature_spec.learned_features()
    ctx = feature_spec.Contract()
    without = feature_spec.Contract(not_learned=())
    assert ctx.features == without.features and ctx.sha256 != without.sha256


def test_trained_heads_never_split_on_unlearned_columns(trained) -> None:
    names = tuple(feature_spec.model_features())
    for head, result in trained.heads.items():
        used = booster_features(result.booster, names)
        assert used and not used & set(feature_spec.NOT_LEARNED), head


def test_calibration_is_applied_after_the_downsampling_recalibration() -> None:
    class Constant:
        def inplace_predict(self, X: np.ndarray) -> np.ndarray:
            return np.full(len(X), 0.2)

    X = np.zeros((3, 2))
    shift = DayAheadCalibration(slope=1.0, intercept=np.log(0.5))
    q = recalibrate(np.array([0.2]), 0.25)[0]
    out = head_probabilities({"like": Constant()}, X, {"like": 0.25}, {"like": shift})
    expected = 1.0 / (1.0 + 2.0 * (1.0 - q) / q)  # odds halved
    np.testing.assert_allclose(out["like"], expected)
    raw = head_probabilities({"like": Constant()}, X, None, {"like": shift})
    np.testing.assert_allclose(raw["like"], 0.2)  # the raw booster output is left alone
    identity = DayAheadCalibration(1.0, 0.0)
    np.testing.assert_allclose(identity.apply(np.array([q])), [q])
    assert DayAheadCalibration.from_json(shift.to_json()) == shift
    with pytest.raises(ValueError):
        DayAheadCalibration.from_json({"slope": -1.0, "intercept": 0.0})


def test_model_records_and_loads_its_day_ahead_calibration(
    train_settings: Settings, trained, synthetic_run
) -> None:
    from jobs.train import train

    meta = json.loads((trained.path / "metadata.json").read_text())
    assert meta["calibration"]["heads"] == {}  # off by default
    assert meta["not_learned"] == list(feature_spec.NOT_LEARNED)
    on = train_settings.model_copy(
        update={
            "training": train_settings.training.model_copy(update={"day_ahead_calibration": True})
        }
    )
    result = train(on, data=synthetic_run, version="day-ahead", show_progress=False)
    record = json.loads((result.path / "metadata.json").read_text())["calibration"]
    manifest = json.loads((synthetic_run / "manifest.json").read_text())
    assert record["method"] == "platt"
    assert record["fitted_on"] == max(manifest["train_dates"])  # the day before held-out
    assert set(record["heads"]) == set(HEADS)
    model = load_model(result.version, on)
    for head in HEADS:
        assert model.calibration[head].to_json() == record["heads"][head]
    X = np.nan_to_num(np.random.default_rng(0).random((5, len(feature_spec.model_features()))))
    plain = head_probabilities(model.boosters, X, model.keep_rates)
    calibrated = model.predict_heads(X)
    for head in HEADS:
        np.testing.assert_allclose(calibrated[head], model.calibration[head].apply(plain[head]))
