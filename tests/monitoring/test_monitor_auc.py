"""Daily AUC of the live model: pipeline labels, the served version's own predictions."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import synthetic_lake
from monitor_names import MODEL_VERSION

from feedrank.config import HEADS
from feedrank.errors import FeedrankError
from feedrank.feature_spec import model_features
from jobs import spark_io
from jobs.monitor import registry_predictor
from jobs.monitor_auc import auc_report, labelled_served, logged_feature_matrix

WIDTH = len(model_features())


def _vector(first: float) -> list[float | None]:
    return [first] + [None] * (WIDTH - 1)


def _score_by_first_feature(version: str, X: np.ndarray) -> dict[str, np.ndarray]:
    if version == "v-gone":
        raise FeedrankError("model v-gone: no such model")
    return dict.fromkeys(HEADS, X[:, 0])


@pytest.mark.unit
def test_auc_by_hand_per_head_and_version():
    scores = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
    frame = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(6)] + ["r6"],
            "tweet_id": list(range(7)),
            "model_version": ["v1"] * 6 + ["v-gone"],
            "features": [_vector(s) for s in scores] + [_vector(0.0)],
            "label_like": [0, 0, 1, 1, 0, 1, 1],
            "label_reply": [1, 0, 0, 0, 0, 0, 0],
            "label_retweet": [0] * 7,
            "label_click": [0] * 7,
            "label_negative": [0] * 7,
        }
    )
    report = auc_report(frame, _score_by_first_feature, min_auc=0.6, min_per_class=1)

    # like: positives 0.35, 0.8, 0.9 vs negatives 0.1, 0.4, 0.2 -> 8 of 9 pairs in order.
    assert report["heads"]["like"]["roc_auc"] == pytest.approx(8 / 9)
    # reply: the one positive has the lowest score -> 0 of 5 pairs.
    assert report["heads"]["reply"]["roc_auc"] == 0.0
    assert report["heads"]["retweet"]["roc_auc"] is None  # one class: not judged
    assert report["breaches"] == ["reply"]
    assert report["status"] == "breach"
    # The unloadable version is reported and its rows left out.
    assert "v-gone" in report["unavailable"]
    assert report["heads"]["like"]["rows"] == 6
    assert report["versions"]["v1"]["like"]["roc_auc"] == pytest.approx(8 / 9)


@pytest.mark.unit
def test_too_few_labels_are_reported_not_judged():
    frame = pd.DataFrame(
        {
            "request_id": ["a", "b"],
            "tweet_id": [1, 2],
            "model_version": ["v1", "v1"],
            "features": [_vector(0.9), _vector(0.1)],
            **{f"label_{h}": [0, 1] for h in HEADS},
        }
    )
    report = auc_report(frame, _score_by_first_feature, min_auc=0.6)  # default: 10 per class

    assert report["heads"]["like"]["roc_auc"] == 0.0
    assert report["heads"]["like"]["judged"] is False
    assert report["breaches"] == [] and report["status"] == "ok"


@pytest.mark.unit
def test_logged_feature_matrix_turns_missing_into_nan():
    X = logged_feature_matrix(pd.Series([_vector(2.0)]))
    assert X.shape == (1, WIDTH) and X[0, 0] == 2.0 and np.isnan(X[0, 1:]).all()


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_live_auc_of_a_registered_model_on_landed_engagements(
    spark, monitor_settings, monitor_model, tmp_path
):
    served_at = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
    window = monitor_settings.training_data.attribution_window_s
    impressions = [
        {
            "schema_version": 1,
            "request_id": "req-1",
            "user_id": 1,
            "tweet_id": 100 + level,
            "author_id": 9,
            "position": level,
            "served_at": served_at,
            "model_version": monitor_model,
            "arm": "treatment",
            "score": 0.0,
            "features": _vector(float(level)),
        }
        for level in range(4)
    ]
    # like on levels 1 and 3 (3 exactly at the window's end: counts); level 2's like comes
    # one second too late; reply only on level 0.
    delays = [("like", 1, 600), ("like", 3, window), ("like", 2, window + 1), ("reply", 0, 300)]
    engagements = [
        {
            "schema_version": 1,
            "request_id": "req-1",
            "user_id": 1,
            "tweet_id": 100 + level,
            "author_id": 9,
            "head": head,
            "engaged_at": served_at + dt.timedelta(seconds=delay),
        }
        for head, level, delay in delays
    ]
    synthetic_lake.write_lake_rows(tmp_path, "impressions", impressions)
    synthetic_lake.write_lake_rows(tmp_path, "engagements", engagements)
    labelled = labelled_served(
        spark_io.read_lake(spark, tmp_path, "impressions", None, None),
        spark_io.read_lake(spark, tmp_path, "engagements", None, None),
        window,
    ).sort_values("tweet_id")
    assert labelled["label_like"].tolist() == [0, 1, 0, 1]
    assert labelled["label_reply"].tolist() == [1, 0, 0, 0]

    predict = registry_predictor(monitor_settings)
    probabilities = predict(MODEL_VERSION, logged_feature_matrix(labelled["features"]))
    assert np.all(np.diff(probabilities["like"]) > 0)  # strictly rising with the level

    report = auc_report(labelled, predict, min_auc=0.6, min_per_class=1)
    # like: positives at levels 1, 3 vs negatives 0, 2 -> 3 of 4 pairs in order.
    assert report["heads"]["like"]["roc_auc"] == pytest.approx(0.75)
    assert report["heads"]["reply"]["roc_auc"] == 0.0
    assert report["breaches"] == ["reply"]
    assert report["versions"][MODEL_VERSION]["like"]["positives"] == 2


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_impressions_whose_labels_are_still_landing_are_not_judged(spark, tmp_path):
    """Monitoring day D right after midnight: engagements have landed until 23:45, so an
    impression served at 23:30 (window 1 h) may still get its like; it is left out, not
    counted as a negative. One served at 12:00 is judged."""
    from jobs.monitor_auc import label_horizon

    window = 3600
    noon = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
    late = dt.datetime(2026, 11, 2, 23, 30, tzinfo=dt.UTC)
    impressions = [
        {
            "schema_version": 1,
            "request_id": f"req-{i}",
            "user_id": 1,
            "tweet_id": 100 + i,
            "author_id": 9,
            "position": 0,
            "served_at": served_at,
            "model_version": MODEL_VERSION,
            "arm": "treatment",
            "score": 0.0,
            "features": _vector(float(i)),
        }
        for i, served_at in enumerate((noon, late))
    ]
    landed_until = dt.datetime(2026, 11, 2, 23, 45, tzinfo=dt.UTC)
    engagements = [
        {
            "schema_version": 1,
            "request_id": "req-0",
            "user_id": 1,
            "tweet_id": 100,
            "author_id": 9,
            "head": head,
            "engaged_at": engaged_at,
        }
        for head, engaged_at in (("like", noon + dt.timedelta(minutes=5)), ("click", landed_until))
    ]
    synthetic_lake.write_lake_rows(tmp_path, "impressions", impressions)
    synthetic_lake.write_lake_rows(tmp_path, "engagements", engagements)
    imps = spark_io.read_lake(spark, tmp_path, "impressions", None, None)
    engs = spark_io.read_lake(spark, tmp_path, "engagements", None, None)
    horizon = label_horizon(engs)
    assert horizon == landed_until
    labelled = labelled_served(imps, engs, window, horizon=horizon)
    assert labelled["request_id"].tolist() == ["req-0"]
    assert labelled["label_like"].tolist() == [1]
    # Once engagements past 00:30 have landed, the late impression is judged too.
    everything = labelled_served(imps, engs, window, horizon=late + dt.timedelta(hours=1))
    assert sorted(everything["request_id"]) == ["req-0", "req-1"]
