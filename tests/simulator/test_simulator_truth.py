"""Ground truth: the world's formula, the copula draws, the oracle, and learnability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from feedrank.config import HEADS, Settings, SimulatorConfig
from feedrank.lake import read_lake_table
from feedrank.schemas import DEVICES
from feedrank.simulator.backfill import simulate_backfill
from feedrank.simulator.engagement import LATENT_INPUTS, draw_engagements, true_probabilities
from feedrank.simulator.oracle import oracle_labels, oracle_metrics
from feedrank.simulator.world import World

LEARN = {"days": 3, "users": 500, "candidates": 100, "seed": 11}


def _config(settings: Settings, **updates: object) -> SimulatorConfig:
    return SimulatorConfig.model_validate({**settings.simulator.model_dump(), **updates})


def _baseline_inputs(n: int) -> dict[str, np.ndarray]:
    base = {name: np.zeros(n) for name in LATENT_INPUTS}
    base["tweet_age_hours"] = np.full(n, 3.0)
    base["days_to_holiday"] = np.full(n, 30.0)
    return base


@pytest.fixture(scope="module")
def learn_lake(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("learn")
    simulate_backfill(settings, root, progress=False, **LEARN)
    return root


@pytest.mark.unit
def test_world_is_deterministic_for_a_seed(settings: Settings) -> None:
    config = _config(settings, users=300)
    one, two, other = World.build(config), World.build(config), World.build(config, seed=99)
    assert np.array_equal(one.follows, two.follows)
    assert np.array_equal(one.interest, two.interest)
    users, authors = np.arange(300), np.resize(one.author_ids, 300)
    assert np.array_equal(one.affinity(users, authors), two.affinity(users, authors))
    assert not np.array_equal(one.affinity(users, authors), other.affinity(users, authors))


@pytest.mark.unit
def test_world_shape_follow_graph_is_heavy_tailed_and_homophilous(settings: Settings) -> None:
    world = World.build(_config(settings, users=1000))
    followers = world.follows.sum(axis=0)
    top_decile = np.sort(followers)[::-1][: world.n_authors // 10]
    assert top_decile.sum() > 0.2 * followers.sum()  # twice their head-count share
    assert followers.max() > 4 * np.median(followers)
    assert not world.follows[world.author_ids, np.arange(world.n_authors)].any()  # no self-follow
    # Users follow authors of topics they like more than authors of other topics.
    taste = world.interest[:, world.author_topic]
    assert taste[world.follows].mean() > taste[~world.follows].mean() + 0.3
    affinity = world.affinity(np.repeat(np.arange(50), 40), np.tile(world.author_ids[:40], 50))
    assert abs(affinity.mean()) < 0.15 and 0.85 < affinity.std() < 1.15


@pytest.mark.unit
def test_formula_moves_each_head_in_the_documented_direction() -> None:
    low, high = _baseline_inputs(1), _baseline_inputs(1)
    high["affinity"] = np.array([1.5])
    p_low, p_high = true_probabilities(low), true_probabilities(high)
    for head in ("like", "reply", "retweet", "click"):
        assert p_high[head][0] > 1.5 * p_low[head][0]
    assert p_high["negative"][0] < p_low["negative"][0]
    # The position effect is mild: position 50 keeps most of position 0's like probability.
    deep = _baseline_inputs(1)
    deep["position"] = np.array([50.0])
    ratio = true_probabilities(deep)["like"][0] / p_low["like"][0]
    assert 0.6 < ratio < 0.95
    stale = _baseline_inputs(1)
    stale["tweet_age_hours"] = np.array([40.0])
    assert true_probabilities(stale)["like"][0] < p_low["like"][0]
    with pytest.raises(ValueError, match="latent inputs missing"):
        true_probabilities({"interest": np.zeros(1)})


@pytest.mark.unit
def test_draws_keep_marginals_and_correlate_heads() -> None:
    n = 400_000
    probs = {head: np.full(n, 0.05) for head in HEADS}
    drawn = draw_engagements(probs, np.random.default_rng(0))
    for head in HEADS:
        assert abs(drawn[head].mean() - 0.05) < 0.003
    like, reply, negative = drawn["like"], drawn["reply"], drawn["negative"]
    assert like[reply].mean() > 2 * like.mean()  # a reply makes a like more likely
    assert like[negative].mean() < like.mean()


@pytest.mark.unit
def test_true_probabilities_reproduce_the_oracle_table(
    settings: Settings, learn_lake: Path
) -> None:
    world = World.build(_config(settings, **{k: v for k, v in LEARN.items() if k != "candidates"}))
    world.load_tweets(read_lake_table(learn_lake, "tweets"))
    day_one = settings.simulator.start_date
    world.load_follows(read_lake_table(learn_lake, "follows"), before_us=world.start_us)
    oracle = read_lake_table(learn_lake, "oracle", [day_one])
    requests = read_lake_table(learn_lake, "feed_requests", [day_one]).to_pandas()
    impressions = read_lake_table(learn_lake, "impressions", [day_one]).to_pandas()
    device = impressions["request_id"].map(
        requests.set_index("request_id")["device"].map(DEVICES.index)
    )
    truth = world.true_probabilities(
        impressions["user_id"].to_numpy(),
        impressions["tweet_id"].to_numpy(),
        oracle.column("served_at").cast(pa.int64()).to_numpy() / 1e6,
        device.to_numpy(),
        impressions["position"].to_numpy(),
    )
    for head in HEADS:
        np.testing.assert_allclose(truth[head], oracle.column(f"p_{head}").to_numpy(), rtol=1e-9)
    with pytest.raises(ValueError, match="unknown tweet"):
        world.true_probabilities(
            np.array([0]), np.array([5]), np.array([0.0]), np.array([0]), np.array([0])
        )


@pytest.mark.unit
def test_oracle_metrics_on_one_day(settings: Settings, learn_lake: Path) -> None:
    day = settings.simulator.start_date
    window_s = settings.training_data.attribution_window_s
    labels = oracle_labels(learn_lake, day, window_s)
    engagements = read_lake_table(learn_lake, "engagements").to_pandas()
    likes_in_window = labels.column("label_like").to_numpy().sum()
    assert 0 < likes_in_window <= (engagements["head"] == "like").sum()
    metrics = oracle_metrics(learn_lake, day, window_s)
    assert set(metrics) == set(HEADS)
    for head in ("like", "click"):
        assert metrics[head]["roc_auc"] > 0.7
        assert metrics[head]["rce"] > 5.0
        assert 0.8 < metrics[head]["calibration"] < 1.25


@pytest.mark.unit
def test_signal_is_learnable_from_latent_inputs_but_needs_user_author_history(
    settings: Settings, learn_lake: Path
) -> None:
    """XGBoost on the latent inputs gets within 0.01 AUC of the oracle on the like head;
    without the user×author affinity (what only history reveals) it stays clearly below."""
    import xgboost as xgb

    world = World.build(_config(settings, **{k: v for k, v in LEARN.items() if k != "candidates"}))
    world.load_tweets(read_lake_table(learn_lake, "tweets"))
    world.load_follows(read_lake_table(learn_lake, "follows"))
    labels = oracle_labels(learn_lake, settings.simulator.start_date, 10**9)
    tables = [labels]
    for offset in (1, 2):
        day = np.datetime64(settings.simulator.start_date) + np.timedelta64(offset, "D")
        tables.append(oracle_labels(learn_lake, str(day), 10**9))
    rows = pa.concat_tables(tables)
    requests = read_lake_table(learn_lake, "feed_requests").to_pandas().set_index("request_id")
    impressions = read_lake_table(learn_lake, "impressions").to_pandas()
    assert (impressions["request_id"].to_numpy() == rows.column("request_id").to_numpy()).all()
    served_s = rows.column("served_at").cast(pa.int64()).to_numpy() / 1e6
    inputs = world.latent_inputs(
        impressions["user_id"].to_numpy(),
        impressions["tweet_id"].to_numpy(),
        served_s,
        impressions["request_id"].map(requests["device"].map(DEVICES.index)).to_numpy(),
        impressions["position"].to_numpy(),
    )
    y = rows.column("label_like").to_numpy()
    test = np.floor(served_s / 86400) == np.floor(served_s.max() / 86400)

    def auc_without(dropped: set[str]) -> float:
        names = [n for n in LATENT_INPUTS if n not in dropped]
        x = np.column_stack([inputs[n] for n in names])
        model = xgb.XGBClassifier(
            n_estimators=150,
            max_depth=4,
            learning_rate=0.1,
            tree_method="hist",
            n_jobs=2,
            random_state=0,
        )
        model.fit(x[~test], y[~test])
        return float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))

    oracle_auc = float(roc_auc_score(y[test], rows.column("p_like").to_numpy()[test]))
    with_latent = auc_without(set())
    without_history = auc_without({"affinity"})
    assert with_latent >= oracle_auc - 0.01, (with_latent, oracle_auc)
    assert without_history <= oracle_auc - 0.04, (without_history, oracle_auc)
