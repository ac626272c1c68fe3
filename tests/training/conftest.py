"""Fixtures of the training tests: a run folder of their own, one synthetic training-data run
(written in the exact ``feedrank training-data`` layout from the feature contract) and models
trained on it once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_examples import write_training_run

from feedrank.config import PathsConfig, Settings

REQUESTS_PER_DAY = 2_000


@pytest.fixture(scope="session")
def train_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Session settings with a private run folder and a small tree budget (fast tests)."""
    home = tmp_path_factory.mktemp("training-home")
    training = settings.training.model_copy(
        update={"n_estimators": 120, "search_budget_s": 0.0, "early_stopping_rounds": 10}
    )
    return settings.model_copy(update={"paths": PathsConfig(home=home), "training": training})


@pytest.fixture(scope="session")
def synthetic_run(train_settings: Settings) -> Path:
    """A training-data run with a known signal (two train days, one validation day).

    2,000 requests a day (40k impressions): enough that the trees resolve the signal; with a
    quarter of that, early-stopped heads stay too flat for the 10% calibration check.
    """
    return write_training_run(
        train_settings.paths.training,
        train_settings.paths.lake,
        run_id="synthetic",
        requests_per_day=REQUESTS_PER_DAY,
        seed=1,
    )


@pytest.fixture(scope="session")
def shuffled_run(train_settings: Settings) -> Path:
    """The same world with the train split's labels permuted: no learnable signal."""
    return write_training_run(
        train_settings.paths.training,
        train_settings.paths.lake,
        run_id="shuffled",
        requests_per_day=REQUESTS_PER_DAY,
        seed=1,
        shuffle_train_labels=True,
    )


@pytest.fixture(scope="session")
def trained(train_settings: Settings, synthetic_run: Path):
    """One single-node model trained on ``synthetic_run`` (a :class:`jobs.train.TrainResult`)."""
    from jobs.train import train

    return train(train_settings, data=synthetic_run, version="good", show_progress=False)
