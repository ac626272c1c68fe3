"""Fixtures of the serving tests: an isolated run folder, a throwaway champion, a producer.

Serving tests use their own run folder (models, feed cache, Feast store) so promoting a test
model never moves the champion of another test suite; Kafka and Redis are the session's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serving_helpers import train_throwaway_model, with_serving

from feedrank.config import PathsConfig, Settings


@pytest.fixture(scope="session")
def serve_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Session settings with a private run folder and /metrics off (tests share a process)."""
    home = tmp_path_factory.mktemp("serving-home")
    settings = settings.model_copy(update={"paths": PathsConfig(home=home)})
    return with_serving(settings, metrics_port=0)


@pytest.fixture(scope="session")
def champion(serve_settings: Settings) -> str:
    """A throwaway model promoted to champion in the serving run folder."""
    from feedrank.tracking import set_champion

    version = train_throwaway_model(serve_settings, seed=1, version="serve-v1")
    set_champion(serve_settings, version)
    return version


@pytest.fixture
def producer(kafka: Settings) -> Iterator[object]:
    """A plain kafka-python producer on the session broker."""
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=kafka.kafka.bootstrap_servers, linger_ms=2)
    yield prod
    prod.close(timeout=10)


# The synthetic Feast world of the serving tests: ids 0..N-1 exist in the online store.
WORLD_USERS, WORLD_TWEETS = 200, 2_000


@pytest.fixture(scope="session")
def feast_world(serve_settings: Settings) -> Settings:
    """A real Feast store (this profile's online store) materialized from synthetic tables."""
    import datetime as dt

    from feedrank.synthetic_features import build_synthetic_store

    build_synthetic_store(
        serve_settings,
        start=dt.date(2026, 11, 1),
        users=WORLD_USERS,
        authors=40,
        tweets=WORLD_TWEETS,
        seed=1,
    )
    return serve_settings


@pytest.fixture(scope="session")
def hydrator_factory(feast_world: Settings):
    """Builds the real fast-path hydrator (serving.hydration.FeatureHydrator) for settings."""
    from serving.hydration import FeatureHydrator

    return lambda settings: FeatureHydrator(settings)
