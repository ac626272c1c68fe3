"""Model tests: behaviour (direction), calibration after downsampling, data contract."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_examples import write_training_run

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.feature_spec import KEEP_PROB_COLUMN, model_features
from feedrank.model import LoadedModel, joint_booster
from feedrank.model_files import load_model
from jobs.train import train
from jobs.train_heads import search_space, train_heads_single_node
from jobs.train_inputs import feature_matrix, load_training_data, resolve_run

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model(train_settings: Settings, trained) -> LoadedModel:
    return load_model(trained.version, train_settings)


@pytest.fixture(scope="module")
def validation(synthetic_run: Path) -> pd.DataFrame:
    return pd.read_parquet(synthetic_run / "validation")


def _mean_like(model: LoadedModel, frame: pd.DataFrame, **overrides: float) -> float:
    X = feature_matrix(frame.assign(**overrides))
    return float(model.predict_heads(X)["like"].mean())


def test_more_past_likes_of_the_author_raise_p_like(model, validation) -> None:
    # All else equal: the same rows, only the user's history with the author changes.
    means = [_mean_like(model, validation, ua_like_count_28d=float(n)) for n in (0, 2, 8)]
    assert means[0] < means[1] < means[2]
    assert means[2] > 1.5 * means[0]


def test_older_tweets_get_a_lower_p_like(model, validation) -> None:
    means = [_mean_like(model, validation, ctx_tweet_age_hours=h) for h in (1.0, 12.0, 48.0)]
    assert means[0] > means[1] > means[2]


def test_calibrated_after_downsampling_within_10pct_of_the_label_rate(model, validation) -> None:
    # Held-out day, negatives re-weighted by 1/keep_prob: the rate the live feed would see.
    w = 1.0 / validation[KEEP_PROB_COLUMN].to_numpy()
    preds = model.predict_heads(feature_matrix(validation))
    raw = model.predict_heads(feature_matrix(validation), calibrated=False)
    for head in ("like", "click", "retweet", "reply"):
        rate = np.average(validation[f"label_{head}"], weights=w)
        assert np.average(preds[head], weights=w) == pytest.approx(rate, rel=0.10), head
        # Without recalibration the downsampled model over-predicts clearly.
        assert np.average(raw[head], weights=w) > 1.3 * rate, head


def test_one_call_to_the_joint_booster_gives_every_head_exactly(model, validation) -> None:
    # Serving predicts all heads with one booster; the heads' own boosters are the reference.
    assert model.joint is not None
    per_head = dataclasses.replace(model, joint=None)
    X = feature_matrix(validation)
    X[::7, ::3] = np.nan  # missing values take each tree's default branch
    for rows in (X, X[:1], X[:0]):
        for calibrated in (True, False):
            joint = model.predict_heads(rows, calibrated=calibrated)
            alone = per_head.predict_heads(rows, calibrated=calibrated)
            assert list(joint) == list(alone)
            for head in alone:
                assert joint[head].dtype == np.float64 and joint[head].shape == (len(rows),)
                np.testing.assert_array_equal(joint[head], alone[head], err_msg=head)


def test_heads_with_different_tree_counts_join_and_unlike_heads_do_not(model, validation) -> None:
    X = feature_matrix(validation)
    heads = dict(model.boosters)
    heads["reply"] = heads["reply"][: max(heads["reply"].num_boosted_rounds() // 2, 1)]
    joint = joint_booster(heads)
    assert joint is not None
    out = np.asarray(joint.inplace_predict(X)).reshape(len(X), len(heads))
    for k, (head, booster) in enumerate(heads.items()):
        np.testing.assert_array_equal(out[:, k], booster.inplace_predict(X), err_msg=head)
    renamed = model.boosters["click"].copy()
    renamed.feature_names = [f"other_{name}" for name in model.features]
    assert joint_booster({**model.boosters, "click": renamed}) is None
    assert joint_booster({"like": model.boosters["like"]}) is None


def test_trained_model_records_contract_rates_and_provenance(model, synthetic_run) -> None:
    meta = model.metadata
    manifest = json.loads((synthetic_run / "manifest.json").read_text())
    # Negatives are re-weighted to a uniform rate r, so every head recalibrates with r.
    assert meta["keep_rates"] == {h: manifest["negative_keep_rate"] for h in manifest["keep_rates"]}
    assert meta["training_data"]["manifest_keep_rates"] == pytest.approx(manifest["keep_rates"])
    assert meta["training_data"]["run"] == str(synthetic_run)
    assert meta["training"]["trainer"] == "single-node"
    assert all(0.6 < meta["metrics"][h]["validation_auc"] <= 1 for h in ("like", "click"))


def test_search_budget_zero_trains_only_the_configured_params(trained) -> None:
    for head in trained.heads.values():
        assert len(head.tried) == 1
        assert head.booster.num_boosted_rounds() == head.best_iteration + 1


def test_search_space_starts_with_the_configured_params(train_settings: Settings) -> None:
    space = search_space(train_settings)
    assert space[0]["max_depth"] == train_settings.training.max_depth
    assert len(space) == len({json.dumps(c, sort_keys=True) for c in space}) >= 3


def test_training_data_without_a_contract_column_is_refused(
    train_settings: Settings, synthetic_run: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(synthetic_run, broken)
    part = next((broken / "train").glob("*.parquet"))
    pd.read_parquet(part).drop(columns=["ua_follows"]).to_parquet(part)
    with pytest.raises(FeedrankError, match=r"lacks 1 column.*ua_follows"):
        train(train_settings, data=broken, show_progress=False)


def test_manifest_for_another_contract_is_refused(synthetic_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "other"
    shutil.copytree(synthetic_run, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["features"] = model_features()[:-1]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeedrankError, match="another feature contract"):
        load_training_data(broken)


def test_latest_run_is_the_one_with_the_latest_validation_day(
    train_settings: Settings, synthetic_run: Path
) -> None:
    later = train_settings.paths.training / "later"
    later.mkdir()
    manifest = json.loads((synthetic_run / "manifest.json").read_text())
    manifest["validation_dates"] = ["2030-01-01"]
    (later / "manifest.json").write_text(json.dumps(manifest))
    try:
        assert resolve_run(train_settings, None) == later
        with pytest.raises(FeedrankError, match="not a training-data run"):
            resolve_run(train_settings, "no-such-run")
    finally:
        shutil.rmtree(later)


def test_search_keeps_the_candidate_with_the_lowest_selection_logloss(
    train_settings: Settings, tmp_path: Path
) -> None:
    run = write_training_run(tmp_path / "training", tmp_path / "lake", requests_per_day=300)
    settings = train_settings.model_copy(
        update={
            "training": train_settings.training.model_copy(
                update={"search_budget_s": 3600.0, "n_estimators": 40}
            )
        }
    )
    heads = train_heads_single_node(load_training_data(run), settings)
    for result in heads.values():
        assert len(result.tried) == len(search_space(settings))
        best = min(result.tried, key=lambda t: t["selection_logloss"])
        assert result.params["max_depth"] == best["max_depth"]
        assert result.params["min_child_weight"] == best["min_child_weight"]
        assert result.selection_logloss == best["selection_logloss"]


def test_trees_and_parameters_are_chosen_on_the_last_training_day_not_the_held_out_day(
    train_settings: Settings, tmp_path: Path
) -> None:
    """The held-out day is the gate's: its labels must not change the trained heads (early
    stopping here; the search compares its candidates on the same rows)."""
    run = write_training_run(tmp_path / "training", tmp_path / "lake", requests_per_day=300)
    settings = train_settings.model_copy(
        update={
            "training": train_settings.training.model_copy(
                update={"search_budget_s": 0.0, "n_estimators": 40}
            )
        }
    )
    data = load_training_data(run)
    heads = train_heads_single_node(data, settings)
    last_train_day = max(data.manifest["train_dates"])
    assert {r.selected_on for r in heads.values()} == {last_train_day}
    shuffled = load_training_data(run)
    rng = np.random.default_rng(1)
    for column in [c for c in shuffled.validation if c.startswith("label_")]:
        shuffled.validation[column] = rng.permutation(shuffled.validation[column].to_numpy())
    again = train_heads_single_node(shuffled, settings)
    X = feature_matrix(data.validation)
    for head, result in heads.items():
        assert again[head].tried == [
            {**t, "seconds": a["seconds"]}
            for t, a in zip(result.tried, again[head].tried, strict=True)
        ]
        assert np.array_equal(
            result.booster.inplace_predict(X), again[head].booster.inplace_predict(X)
        )


def test_light_ranker_pruning_keeps_what_the_heavy_ranker_ranks_high(model, validation) -> None:
    # The funnel's contract: pruning a request's candidates to half by light score keeps most
    # of the heavy ranker's top 5; random pruning keeps half of it on average (measured here:
    # 0.72 with the distilled light ranker).
    X = feature_matrix(validation)
    heavy = model.weighted_scores(X)
    light = model.light_scores(X)
    kept_shares = []
    for rows in validation.groupby("request_id").indices.values():
        if len(rows) < 10:
            continue
        top = set(rows[np.argsort(-heavy[rows], kind="stable")[:5]])
        kept = set(rows[np.argsort(-light[rows], kind="stable")[: len(rows) // 2]])
        kept_shares.append(len(top & kept) / 5)
    assert len(kept_shares) > 500
    assert model.light.target == "heavy_weighted_score"
    assert np.mean(kept_shares) > 0.65, np.mean(kept_shares)
