"""Shared fixtures. Services are started through the same code users run (feedrank.services),
reused when already up, and stopped at the end only if this session started them.

Tests run against their own run folder (``FEEDRANK_PATHS__HOME``, default ``var/test``) so a
``make demo`` run folder is never touched by ``make test``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault(
    "FEEDRANK_PATHS__HOME", str(Path(__file__).resolve().parent.parent / "var" / "test")
)

from feedrank.config import Settings, get_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The resolved settings of the test session (profile from FEEDRANK_PROFILE)."""
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def spark(settings: Settings):
    """One SparkSession for the whole run (start-up costs ~7 s)."""
    from feedrank.spark import get_spark

    session = get_spark("feedrank-tests", settings)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def kafka(settings: Settings) -> Iterator[Settings]:
    """A real KRaft broker on 127.0.0.1 with every configured topic provisioned."""
    from feedrank import services

    started = services.kafka_up(settings)
    yield settings
    if started:
        services.kafka_down(settings)


@pytest.fixture(scope="session")
def redis_server(settings: Settings) -> Iterator[Settings]:
    """A real redis-server on 127.0.0.1."""
    from feedrank import services

    started = services.redis_up(settings)
    yield settings
    if started:
        services.redis_down(settings)
