"""Shared fixtures. Services are started through the same code users run (feedrank.services),
reused when already up, and stopped at the end only if this session started them.

Tests run against their own run folder (``FEEDRANK_PATHS__HOME``, default ``var/test``) and
their own ports (Kafka 29092/29093, Redis 26379, Spark master 27077) so a ``make demo`` run
is never touched by ``make test``. Any of them can be overridden with the FEEDRANK_* env.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault(
    "FEEDRANK_PATHS__HOME", str(Path(__file__).resolve().parent.parent / "var" / "test")
)
# Ports of their own too, so a `make up` broker (var/, default ports) and a test session can
# run side by side without one provisioning or stopping the other's services.
for _key, _port in (
    ("FEEDRANK_KAFKA__PORT", "29092"),
    ("FEEDRANK_KAFKA__CONTROLLER_PORT", "29093"),
    ("FEEDRANK_REDIS__PORT", "26379"),
    ("FEEDRANK_SPARK__MASTER_PORT", "27077"),
    ("FEEDRANK_SPARK__MASTER_WEBUI_PORT", "28080"),
):
    os.environ.setdefault(_key, _port)
if os.environ.get("FEEDRANK_PROFILE") == "cluster":
    # cluster.yaml names the default master port; follow the test session's own port.
    os.environ.setdefault(
        "FEEDRANK_SPARK__MASTER", f"spark://127.0.0.1:{os.environ['FEEDRANK_SPARK__MASTER_PORT']}"
    )

from feedrank.config import Settings, get_settings  # noqa: E402
from feedrank.services import airflow_env  # noqa: E402

# Airflow reads its configuration when first imported: point it at the test run folder
# (AIRFLOW_HOME, SQLite DB, dags/) before any test imports it.
for _key, _value in airflow_env(get_settings()).items():
    os.environ.setdefault(_key, _value)
get_settings.cache_clear()
# py4j logs "closing connection" from __del__ at interpreter exit, after pytest closed the
# streams, which prints a "Logging error" traceback on an otherwise green run.
logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The resolved settings of the test session (profile from FEEDRANK_PROFILE)."""
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def spark(settings: Settings):
    """One SparkSession for the whole run (start-up costs ~7 s), Kafka connector on its path."""
    from feedrank import services
    from feedrank.spark import get_spark

    services.fetch_jars(settings)  # a no-op after `make setup`; pytest may run without it
    # The cluster profile runs on the local standalone cluster, started like `make up` does.
    cluster = settings.spark.master == services.spark_master_url(settings)
    started = cluster and services.spark_cluster_up(settings)
    session = get_spark("feedrank-tests", settings)
    yield session
    session.stop()
    if started:
        services.spark_cluster_down(settings)


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


@pytest.fixture(scope="session")
def airflow_db(settings: Settings) -> dict[str, str]:
    """A migrated Airflow metadata DB (SQLite) in the test run folder; returns the Airflow env.

    The migration runs once per run folder and Airflow version (stamp), ~6 s the first time.
    """
    from feedrank import services

    services.airflow_migrate(settings)
    return services.airflow_env(settings)
