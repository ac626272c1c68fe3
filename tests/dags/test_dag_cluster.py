"""``dag.test()`` of the retrain DAG on the cluster profile: one day of a small world, with the
profile's services up as ``FEEDRANK_PROFILE=cluster make up`` starts them (3 KRaft brokers at
replication factor 3 and min.insync.replicas 2, the Redis online store, the Spark standalone
master with 2 workers; no serve processes: nothing is served here).

Every step of the DAG then runs the cluster's way: the Spark jobs as applications of the
standalone master, the heads trained by ``xgboost.spark`` on its workers, Feast's Spark
offline store read by materialization into Redis. The retrain DAG itself writes no Kafka
topic; the brokers are up because the profile runs them beside it.

The world's services get ports of their own (the session's plus ``PORT_OFFSET``, as
``tests/foundation/test_kafka_cluster.py`` does for its brokers) and its run folder, so the
session's broker and Redis are never touched; the Spark master takes the session's master
port, as the other standalone-cluster tests do (one at a time).
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dag_helpers import SMALL_WORLD, DagTestRun, land_through, run_dag_test, simulate

from feedrank import services, tracking
from feedrank.config import Settings, get_settings, redis_client_kwargs

RETRAIN = "feed_ranking_retrain"
DAY = "2026-11-02"  # the run's day: trained on 2026-11-01, validated on 2026-11-02
LOGICAL_DATE = "2026-11-03"  # dag.test() at D+1 00:00 gets the scheduled interval [D, D+1)
CONF = {"training_days": 2}
PORT_OFFSET = 300  # test_kafka_cluster.py's brokers use 200

# Not in `make test` (`-m "not cluster"` in pyproject.toml): `make test-cluster` runs it. Measured
# here at 8-11 min (3-4.5 min of CPU) under load averages of 8-13 on 2 cores, twice the ~4 min
# the suite could take on.
pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.timeout(1800)]


def _cluster_env(home: Path) -> dict[str, str]:
    """The environment of the cluster world: the small DAG world on the cluster profile."""
    session = get_settings()
    return {
        **SMALL_WORLD,
        "FEEDRANK_SIMULATOR__DAYS": "2",  # 2026-11-01 and 2026-11-02
        "FEEDRANK_PROFILE": "cluster",
        "FEEDRANK_PATHS__HOME": str(home),
        "FEEDRANK_KAFKA__PORT": str(session.kafka.port + PORT_OFFSET),
        "FEEDRANK_KAFKA__CONTROLLER_PORT": str(session.kafka.controller_port + PORT_OFFSET),
        "FEEDRANK_REDIS__PORT": str(session.redis.port + PORT_OFFSET),
        "FEEDRANK_SPARK__MASTER_PORT": str(session.spark.master_port),
        "FEEDRANK_SPARK__MASTER_WEBUI_PORT": str(session.spark.master_webui_port),
        "FEEDRANK_SPARK__MASTER": f"spark://127.0.0.1:{session.spark.master_port}",
    }


def _settings_of(env: dict[str, str]) -> Settings:
    """The settings a process started with ``env`` resolves (the DAG's tasks are such)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return Settings()


def _master_apps(settings: Settings) -> list[dict]:
    """Running and completed applications the standalone master reports."""
    url = f"http://127.0.0.1:{settings.spark.master_webui_port}/json/"
    with urllib.request.urlopen(url, timeout=10) as response:
        state = json.load(response)
    return state.get("activeapps", []) + state.get("completedapps", [])


@dataclass
class ClusterRun:
    """The DAG run, the world's settings, and what the master and Redis held after it."""

    run: DagTestRun
    settings: Settings
    apps: list[dict]
    online_views: Counter[str]


@pytest.fixture(scope="module")
def cluster_world(dag_home: Path) -> Iterator[Settings]:
    """The cluster profile's services for the run folder, stopped at the end."""
    env = _cluster_env(dag_home)
    settings = _settings_of(env)
    assert settings.profile == "cluster" and settings.kafka.brokers == 3
    try:
        services.kafka_up(settings)
        services.redis_up(settings)
        services.spark_cluster_up(settings)
        yield settings
    finally:
        services.spark_cluster_down(settings)
        services.redis_down(settings)
        services.kafka_down(settings)


@pytest.fixture(scope="module")
def cluster_run(dag_home: Path, cluster_world: Settings) -> ClusterRun:
    """One day simulated, landed and retrained by the DAG on the cluster."""
    import redis

    env = _cluster_env(dag_home)
    lake = simulate(dag_home, env, out=dag_home / "simulated" / "lake")
    assert land_through(lake, dag_home / "lake", DAY)
    # `monitor` is marked successful, as on test_dag_runs.py's later days: the simulated world
    # serves no logged feature vectors, so it has nothing to check (tests/monitoring has its
    # own tests), and its Spark application would cost this module ~40 s on 2 busy cores.
    run = run_dag_test(
        dag_home, RETRAIN, LOGICAL_DATE, conf=CONF, env=env, fast_retries=True,
        mark_success="monitor",
    )  # fmt: skip
    print(f"retrain {DAY} on the cluster profile: {run.wall_s:.1f} s, {run.state}")
    # Feast's Redis layout: one hash per entity key, a `_ts:<view>` field per materialized view.
    client = redis.Redis(**redis_client_kwargs(cluster_world))
    views: Counter[str] = Counter()
    for key in client.scan_iter(count=1000):
        for field in client.hkeys(key):
            if field.startswith(b"_ts:"):
                views[field.removeprefix(b"_ts:").decode()] += 1
    client.close()
    return ClusterRun(run, cluster_world, _master_apps(cluster_world), views)


def test_the_retrain_dag_runs_end_to_end_on_the_cluster_profile(
    dag_home: Path, cluster_run: ClusterRun
) -> None:
    run, settings = cluster_run.run, cluster_run.settings
    states = {task: s["state"] for task, s in run.tasks.items()}
    assert run.state == "success", (states, run.log[-6000:])
    # Every task ran and succeeded at its first try (promote too: no champion to beat yet).
    assert len(states) == 10 and set(states.values()) == {"success"}, states
    assert all(s["try_number"] == 1 for s in run.tasks.values()), run.tasks

    # The model: trained by xgboost.spark on the standalone master, registered, champion.
    [version] = [p.name for p in settings.paths.models.iterdir() if p.is_dir()]
    meta = json.loads((settings.paths.models / version / "metadata.json").read_text())
    assert meta["training"]["trainer"] == "xgboost.spark"
    assert meta["training"]["spark_master"] == settings.spark.master
    assert settings.spark.master.startswith("spark://127.0.0.1:")
    assert tracking.champion_version(settings) == version
    assert [(r.feedrank_version, r.champion) for r in tracking.list_versions(settings)] == [
        (version, True)
    ]

    # The Spark steps were applications of the master, one each, all finished: the two batch
    # jobs, the training and Feast's materialization (its Spark offline store's own session).
    names = sorted(app["name"] for app in cluster_run.apps)
    assert names == [
        "feedrank-features", "feedrank-train", "feedrank-training-data", "pyspark-shell"
    ], names  # fmt: skip
    assert {app["state"] for app in cluster_run.apps} == {"FINISHED"}, cluster_run.apps

    # The online store is Redis, materialized for every batch view the DAG loads.
    assert settings.feast.online_store == "redis" and settings.feast.offline_store == "spark"
    assert len(cluster_run.online_views) >= 3, cluster_run.online_views
    assert all(n > 0 for n in cluster_run.online_views.values())
    assert not list(dag_home.rglob("online.db"))  # no SQLite store on the side
