"""Feature-store fixtures: a Feast store over feature tables generated from the spec.

Until the Spark feature jobs' output is wired in here, the tables come from
``feedrank.synthetic_features.write_synthetic_feature_tables`` (driven by ``feature_spec``),
in a run folder of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from feast_world import AS_OF, DAYS, SIZES, START, materialize_as_of

from feedrank.config import FeastConfig, PathsConfig, Settings, redis_client_kwargs


@pytest.fixture(scope="session")
def feature_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding the synthetic feature tables."""
    from feedrank.synthetic_features import write_synthetic_feature_tables

    home = tmp_path_factory.mktemp("feast-home")
    write_synthetic_feature_tables(
        home / "features", start=START, days=DAYS, stream_step_minutes=60, seed=11, **SIZES
    )
    return home


@pytest.fixture(scope="session")
def sqlite_store(settings: Settings, feature_home: Path) -> Iterator[Settings]:
    """Local profile (SQLite online, file offline), applied and materialized as of AS_OF."""
    from feedrank.featurestore import apply_repo

    local = settings.model_copy(
        update={"paths": PathsConfig(home=feature_home), "feast": FeastConfig()}
    )
    apply_repo(local)
    materialize_as_of(local, AS_OF)
    yield local


@pytest.fixture(scope="session")
def redis_store(redis_server: Settings, feature_home: Path) -> Iterator[Settings]:
    """Redis profile on the session's redis-server, its own Feast project, as of AS_OF."""
    import redis

    from feedrank.featurestore import apply_repo

    project = "feedrank_tests_features"
    client = redis.Redis(**redis_client_kwargs(redis_server))
    for key in client.scan_iter(match=b"*" + project.encode()):
        client.delete(key)
    remote = redis_server.model_copy(
        update={
            "paths": PathsConfig(home=feature_home),
            "feast": FeastConfig(online_store="redis", project=project),
        }
    )
    apply_repo(remote)
    materialize_as_of(remote, AS_OF)
    yield remote
