"""Fixtures of the monitoring tests: one tiny lake world, its feature tables, and "served"
impressions of its last day whose logged vectors come from the plain-Python reference join
(an independent path from the Spark recomputation the skew check runs).

Also a real model version in the registry: five one-feature XGBoost heads whose probability
rises strictly with the first model feature, so AUCs can be checked by hand.
"""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest
from monitor_names import DAY, MODEL_VERSION, START, MonitorWorld

from feedrank.config import HEADS, PathsConfig, Settings
from feedrank.feature_spec import LIGHT_RANKER_FEATURES, model_features


def _rows(path) -> list[dict]:
    return pads.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pylist()


@pytest.fixture(scope="session")
def monitor_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Session settings with a private run folder."""
    home = tmp_path_factory.mktemp("monitoring-home")
    return settings.model_copy(update={"paths": PathsConfig(home=home)})


@pytest.fixture(scope="session")
def monitor_world(spark, monitor_settings: Settings) -> MonitorWorld:
    """Two days of a 12-user world, its feature tables, and DAY's served impressions."""
    import synthetic_lake
    from reference_joins import reference_training_examples

    from jobs import features
    from jobs.training_data import JOIN_ORDER

    cfg = monitor_settings
    world = synthetic_lake.generate_world(
        START, 2, users=12, seed=5, requests_per_user_day=2.0, candidates=5
    )
    synthetic_lake.write_world(cfg.paths.lake, world)
    features.run_features(spark, cfg, START, DAY)
    views = {name: _rows(cfg.paths.features / name) for name in JOIN_ORDER}
    day_impressions = [r for r in world["impressions"] if r["served_at"].date() == DAY]
    reference = reference_training_examples(
        day_impressions,
        world["engagements"],
        world["feed_requests"],
        views,
        cfg.training_data.attribution_window_s,
        1.0,  # keep every impression: one reference row per served impression
        DAY,
    )
    by_id = {(r["request_id"], r["tweet_id"]): r for r in reference}
    names = model_features()
    served = []
    for imp in day_impressions:
        ref = by_id[(imp["request_id"], imp["tweet_id"])]
        vector = [None if ref[n] is None else float(ref[n]) for n in names]
        served.append({**imp, "model_version": MODEL_VERSION, "features": vector})
    return MonitorWorld(cfg, world, served)


@pytest.fixture(scope="session")
def served_lake(monitor_world: MonitorWorld) -> MonitorWorld:
    """The world whose lake holds DAY's impressions as served: with the logged vectors.

    The same impressions as before; START's keep no vectors (a day with nothing to monitor).
    """
    import synthetic_lake

    from feedrank import lake

    cfg = monitor_world.settings
    for part in lake.partition_dir(cfg.paths.lake, "impressions", DAY).glob("*.parquet"):
        part.unlink()
    synthetic_lake.write_lake_rows(cfg.paths.lake, "impressions", monitor_world.served)
    return monitor_world


@pytest.fixture(scope="session")
def monitor_model(monitor_settings: Settings) -> str:
    """A registered model whose every head's probability rises strictly with feature 0."""
    import xgboost as xgb

    from feedrank.model import LightRanker
    from feedrank.model_files import save_model

    rng = np.random.default_rng(0)
    n, width = 4_000, len(model_features())
    level = rng.integers(0, 4, n).astype(np.float64)
    X = np.full((n, width), np.nan)
    X[:, 0] = level
    y = (rng.random(n) < np.array([0.1, 0.3, 0.6, 0.9])[level.astype(int)]).astype(float)
    params = {"objective": "binary:logistic", "max_depth": 2, "eta": 0.5, "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=5)
    k = len(LIGHT_RANKER_FEATURES)
    light = LightRanker(
        features=LIGHT_RANKER_FEATURES,
        coef=(0.0,) * k,
        intercept=0.0,
        mean=(0.0,) * k,
        scale=(1.0,) * k,
        fill_values=(0.0,) * k,
    )
    save_model(
        monitor_settings,
        boosters=dict.fromkeys(HEADS, booster),
        light_ranker=light,
        keep_rates=dict.fromkeys(HEADS, 1.0),
        training_data={"run": str(monitor_settings.paths.training / "none")},
        version=MODEL_VERSION,
    )
    return MODEL_VERSION
