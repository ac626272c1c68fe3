"""Start, stop and probe the local services feedrank runs on: the one place that does it.

``make up`` / ``make down``, the test fixtures (``tests/conftest.py``) and the demo all go
through these functions, so what tests exercise is what users run:

* Kafka: Apache Kafka 4.x KRaft broker+controller nodes (one, or ``kafka.brokers`` in a
  static quorum: 3 in the cluster profile) from the jars ``infra/kafka/pom.xml`` fetches into
  ``.cache/kafka-jars``, started as ``java -cp '<jars>/*' kafka.Kafka <config>`` with their
  configs rendered from settings into the run folder. Ready only when a kafka-python metadata
  request succeeds and every broker registered; topics come from ``settings.kafka.topics``
  (``kafka.replication_factor`` replicas, ``kafka.min_insync_replicas``).
* Redis: Debian's ``redis-server`` on 127.0.0.1 (installed with apt-get when absent).
* Spark: a local standalone master + workers from the pip package (``spark-class``).
* serve: ``serving.processes`` ``feedrank serve`` members of one consumer group (cluster: 2).
* Airflow: the environment (AIRFLOW_HOME in the run folder, dags folder = ``dags/``) and the
  SQLite metadata DB migration.

Every process gets a pid file under ``paths.pids`` and a log under ``paths.logs``. A pid file
is trusted only if its process is alive and its command line (or working folder) names this
run folder, so a stale file (reboot, ``kill -9``) never makes us signal someone else's
process. Starting a running service or stopping a stopped one is a no-op; a port taken by
another program is a clear error, not a half-started service.

One module per job: :mod:`.process` (pid files, start, stop, locks), :mod:`.jars`,
:mod:`.kafka_broker`, :mod:`.redis_server`, :mod:`.spark_cluster`, :mod:`.serve_processes`,
:mod:`.airflow_standalone`,
:mod:`.status` (everything ``make status`` lists) and :mod:`.__main__` (the command line the
Makefile uses)::

    python -m feedrank.services up [--redis] [--spark-cluster] [--no-kafka]
    python -m feedrank.services down | status | setup | fetch-jars | airflow-env

The functions callers use are importable from ``feedrank.services`` itself.
"""

from feedrank.readiness import kafka_ready, redis_ready
from feedrank.services.airflow_standalone import (
    airflow_down,
    airflow_env,
    airflow_migrate,
    airflow_password_file,
    airflow_ready,
    airflow_up,
    airflow_url,
)
from feedrank.services.jars import fetch_jars, kafka_jars_dir, spark_jars_dir
from feedrank.services.kafka_broker import (
    broker_nodes,
    create_topics,
    ensure_topics,
    kafka_down,
    kafka_up,
    topic_partition_counts,
)
from feedrank.services.redis_server import redis_down, redis_up
from feedrank.services.serve_processes import serve_down, serve_up
from feedrank.services.spark_cluster import (
    spark_cluster_down,
    spark_cluster_ready,
    spark_cluster_up,
    spark_master_url,
)
from feedrank.services.status import profile_services, status

__all__ = [
    "airflow_down",
    "airflow_env",
    "airflow_migrate",
    "airflow_password_file",
    "airflow_ready",
    "airflow_up",
    "airflow_url",
    "broker_nodes",
    "create_topics",
    "ensure_topics",
    "fetch_jars",
    "kafka_down",
    "kafka_jars_dir",
    "kafka_ready",
    "kafka_up",
    "profile_services",
    "redis_down",
    "redis_ready",
    "redis_up",
    "serve_down",
    "serve_up",
    "spark_cluster_down",
    "spark_cluster_ready",
    "spark_cluster_up",
    "spark_jars_dir",
    "spark_master_url",
    "status",
    "topic_partition_counts",
]
