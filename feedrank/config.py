"""Typed configuration for every feedrank component.

Long because: one model per component, each field with its description, in one place.

One pydantic model per component, assembled into :class:`Settings`. Values come from, in
order of precedence: environment variables (``FEEDRANK_<SECTION>__<FIELD>``), the profile
YAML (``feedrank/profiles/<profile>.yaml``, profile chosen by ``FEEDRANK_PROFILE``; default
``local``), then the defaults below. Unknown keys are rejected everywhere so a typo in a
profile or an environment variable fails loudly instead of being ignored.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from feedrank.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Installed from a wheel, PROJECT_ROOT is site-packages: no checkout, so no default may hang
# off it (the run folder is ./var of the working directory there, see PathsConfig).
IN_CHECKOUT = (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "feedrank").is_dir()
# The profiles ship inside the package (package data), checkout or wheel alike.
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
PROFILES = ("local", "redis", "cluster", "secure")
HEADS: tuple[str, ...] = ("like", "reply", "retweet", "click", "negative")
# The heads whose engagement is positive (every head but negative feedback).
POSITIVE_HEADS: tuple[str, ...] = tuple(h for h in HEADS if h != "negative")
# Timeout of every consumer-group poll (serving, streaming features). A poll returns as soon
# as records arrive; the timeout only bounds an idle wait. Not short: kafka-python 3.0.12
# (used before 2.3) threw away a group join that completed while no poll waited for it and
# joined again, and with 5 ms polls that left serving members without their partitions.
GROUP_POLL_TIMEOUT_MS = 500


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _default_home() -> Path:
    """``var/`` of the checkout; installed from a wheel, ``./var`` of the working directory."""
    return (PROJECT_ROOT if IN_CHECKOUT else Path.cwd()) / "var"


class PathsConfig(Section):
    home: Path = Field(
        default_factory=_default_home,
        description="Run folder: logs, pid files, lake, models, Kafka and Airflow state "
        "(default: the checkout's var/, or ./var of the working directory when installed).",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Downloaded artifacts (Kafka and Spark jars), kept across runs (default: "
        "the checkout's .cache/, or <home>/cache when installed).",
    )
    feature_repo: Path | None = Field(
        default=None,
        description="The Feast repository (feature definitions) that feast-apply registers "
        "(default: the checkout's feature_repo/; installed from a wheel, set it to a copy).",
    )

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def pids(self) -> Path:
        return self.home / "run"

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    @property
    def features(self) -> Path:
        return self.home / "features"

    @property
    def feature_history(self) -> Path:
        """`features`' history summaries and snapshot record (jobs/feature_history.py)."""
        return self.home / "feature_history"

    @property
    def training(self) -> Path:
        return self.home / "training"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def dead_letter(self) -> Path:
        return self.home / "dead_letter"

    @property
    def cache(self) -> Path:
        """Downloaded artifacts (Kafka and Spark connector jars); kept across runs."""
        if self.cache_dir is not None:
            return self.cache_dir
        return PROJECT_ROOT / ".cache" if IN_CHECKOUT else self.home / "cache"

    @property
    def feast_repo(self) -> Path:
        """The Feast repository folder (``paths.feature_repo`` or the checkout's)."""
        return self.feature_repo if self.feature_repo is not None else PROJECT_ROOT / "feature_repo"


class TopicConfig(Section):
    partitions: int = Field(default=3, ge=1, description="Partition count.")
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, description="Retention in ms.")
    max_message_bytes: int = Field(default=1_048_576, description="Largest accepted message.")


class Topics:
    """feedrank's topic names, declared once: every producer and consumer takes them from here."""

    TWEETS = "tweets"
    FOLLOWS = "follows"
    FEED_REQUESTS = "feed_requests"
    IMPRESSIONS = "impressions"
    ENGAGEMENTS = "engagements"
    RANKED_FEEDS = "ranked_feeds"
    ALL = (TWEETS, FOLLOWS, FEED_REQUESTS, IMPRESSIONS, ENGAGEMENTS, RANKED_FEEDS)

    @staticmethod
    def dlq(name: str) -> str:
        """The dead-letter topic of topic ``name``."""
        return f"{name}.dlq"


# The consumer group of `feedrank stream-features` (its committed offsets are its restart point).
STREAM_FEATURES_GROUP = "feedrank-stream-features"
# Kafka principals with every right (super.users): the brokers among themselves, and the
# operator's tools (topic provisioning, ACLs, readiness probes, the demo, benches, tests).
KAFKA_SUPER_USERS: tuple[str, ...] = ("broker", "admin")


@dataclass(frozen=True)
class KafkaAccess:
    """What one component's Kafka principal may do under ``kafka.security: scram``.

    Each topic in ``read`` gets Read and Describe, each in ``write`` Write and Describe, the
    group (if any) Read (join, fetch and commit offsets). Nothing else is allowed
    (``allow.everyone.if.no.acl.found=false``).
    """

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    group: str | None = None

    def bindings(self) -> set[tuple[str, str, str]]:
        """Every (resource type, literal resource name, operation) this access allows."""
        allowed = {("topic", t, op) for t in self.read for op in ("Read", "Describe")}
        allowed |= {("topic", t, op) for t in self.write for op in ("Write", "Describe")}
        if self.group is not None:
            allowed.add(("group", self.group, "Read"))
        return allowed


def kafka_access(serving_group: str) -> dict[str, KafkaAccess]:
    """The least-privilege ACL table, declared once: the local brokers get exactly these ACLs
    (feedrank/services/kafka_security.py) and the Helm chart's KafkaUsers are checked against
    it (tests/deploy/test_chart.py).

    Args:
        serving_group: ``serving.group_id``, the serving consumer group.
    """
    return {
        "serve": KafkaAccess(
            read=(Topics.FEED_REQUESTS,),
            write=(Topics.RANKED_FEEDS, Topics.IMPRESSIONS, Topics.dlq(Topics.FEED_REQUESTS)),
            group=serving_group,
        ),
        "stream-features": KafkaAccess(
            read=(Topics.ENGAGEMENTS,),
            write=(Topics.dlq(Topics.ENGAGEMENTS),),
            group=STREAM_FEATURES_GROUP,
        ),
        # Spark's Kafka source reads with assign() and keeps its offsets in its checkpoint.
        "land": KafkaAccess(
            read=(
                Topics.TWEETS,
                Topics.FOLLOWS,
                Topics.FEED_REQUESTS,
                Topics.IMPRESSIONS,
                Topics.ENGAGEMENTS,
            )
        ),
        # The live simulator and the load generators: the world's events in, the feeds out.
        "simulator": KafkaAccess(
            read=(Topics.RANKED_FEEDS,),
            write=(
                Topics.TWEETS,
                Topics.FOLLOWS,
                Topics.FEED_REQUESTS,
                Topics.ENGAGEMENTS,
                Topics.dlq(Topics.RANKED_FEEDS),
            ),
        ),
    }


KAFKA_PRINCIPALS: tuple[str, ...] = (*KAFKA_SUPER_USERS, *kafka_access(""))


def _default_topics() -> dict[str, TopicConfig]:
    topics = {name: TopicConfig() for name in Topics.ALL}
    # The serving group's unit of scale-out: 6 splits evenly over 1, 2, 3 or 6 `feedrank serve`
    # processes (with 3, two processes got 2 and 1 partitions: twice the load on one).
    topics[Topics.FEED_REQUESTS] = TopicConfig(partitions=6)
    for name in Topics.ALL:
        topics[Topics.dlq(name)] = TopicConfig(partitions=1)
    return topics


# Above kafka-python's consumer fetch_max_bytes (50 MiB): see KafkaConfig.client_options.
RECEIVE_MESSAGE_MAX_BYTES = 64 * 1024 * 1024


class KafkaConfig(Section):
    host: str = Field(default="127.0.0.1", description="Broker listener host (loopback only).")
    port: int = Field(
        default=19092, description="Client port of the first broker (broker i: port + 2i)."
    )
    controller_port: int = Field(
        default=19093,
        description="KRaft controller port of the first broker (broker i: controller_port + 2i).",
    )
    brokers: int = Field(
        default=1,
        ge=1,
        description="KRaft nodes started on the host, each a combined broker and controller "
        "(1: a single-node dynamic quorum; more: a static quorum of all of them).",
    )
    replication_factor: int = Field(
        default=1, ge=1, description="Replicas of every topic (and of Kafka's internal ones)."
    )
    min_insync_replicas: int = Field(
        default=1,
        ge=1,
        description="min.insync.replicas of every topic: an acks=all write needs this many "
        "replicas in sync, or it is refused (NotEnoughReplicas) rather than kept on too few.",
    )
    idempotent_producers: bool = Field(
        default=False,
        description="Producers use enable_idempotence (no duplicate from a retried send). "
        "kafka-python then sends one request at a time per broker, which slows a busy "
        "producer: on for the replicated cluster profile, where retries happen.",
    )
    broker_session_timeout_ms: int = Field(
        default=3000,
        ge=1000,
        description="broker.session.timeout.ms: a broker whose heartbeats stop for this long is "
        "fenced by the controller, which moves its leaderships and drops it from every ISR. "
        "Until then the partitions it led, and every acks=all write to a partition it "
        "follows, wait (Kafka's default, 9 s, was most of the stall after a broker kill).",
    )
    broker_heartbeat_interval_ms: int = Field(
        default=500,
        ge=100,
        description="broker.heartbeat.interval.ms: broker heartbeats to the controller "
        "(several per broker_session_timeout_ms, so one slow beat does not fence a live broker).",
    )
    client_request_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        description="Producers' request_timeout_ms: a produce request unanswered this long is "
        "retried (kafka-python's default, 30 s, held a write as long when a broker died with "
        "it in flight; with idempotence the retry cannot duplicate).",
    )
    reconnect_backoff_max_ms: int = Field(
        default=1000,
        ge=50,
        description="Every client's reconnect_backoff_max_ms: kafka-python doubles the wait "
        "between reconnects to a dead broker up to this (its default is 30 s; Kafka's Java "
        "clients use 1 s), so a restarted broker is used again within about this long.",
    )
    group_session_timeout_ms: int = Field(
        default=6000,
        ge=6000,
        description="Consumer groups' session_timeout_ms: a member that stops heartbeating "
        "(a killed serve process) keeps its partitions this long before they are reassigned "
        "(the broker's group.min.session.timeout.ms, 6 s, is the floor; kafka-python's "
        "default is 10 s).",
    )
    group_heartbeat_interval_ms: int = Field(
        default=2000, ge=100, description="Consumer groups' heartbeat_interval_ms (≤ 1/3 of it)."
    )
    version: str = Field(default="4.1.1", description="Apache Kafka version fetched by Maven.")
    ready_timeout_s: float = Field(default=60.0, description="How long to wait for readiness.")
    topics: dict[str, TopicConfig] = Field(
        default_factory=_default_topics, description="Every topic feedrank uses, declared once."
    )

    security: Literal["none", "scram"] = Field(
        default="none",
        description="none: plaintext listener, no authorization. scram: the client listener "
        "requires SASL/SCRAM-SHA-512, the brokers authorize every request against the ACLs of "
        "feedrank.config.kafka_access (nothing allowed without an ACL), and every client "
        "authenticates as its component's principal (docs/security.md).",
    )
    username_prefix: str = Field(
        default="",
        description="Prepended to each principal's name to make its Kafka user name (the Helm "
        "chart's KafkaUsers are named <release>-feedrank-<principal>).",
    )
    password_dir: Path | None = Field(
        default=None,
        description="Folder of the SCRAM passwords, one file <principal>.password each "
        "(default <paths.home>/secrets/kafka; `make up` creates missing ones with a random "
        "password, mode 0600). Point it outside the checkout in production.",
    )

    @model_validator(mode="after")
    def _replication_fits(self) -> KafkaConfig:
        if self.replication_factor > self.brokers:
            raise ValueError(
                f"replication_factor {self.replication_factor} needs as many brokers "
                f"(brokers: {self.brokers})"
            )
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError("min_insync_replicas cannot exceed replication_factor")
        if self.broker_heartbeat_interval_ms * 3 > self.broker_session_timeout_ms:
            raise ValueError(
                "broker_heartbeat_interval_ms must be ≤ 1/3 of broker_session_timeout_ms"
            )
        if self.group_heartbeat_interval_ms * 3 > self.group_session_timeout_ms:
            raise ValueError(
                "group_heartbeat_interval_ms must be ≤ 1/3 of group_session_timeout_ms"
            )
        ports = [p for node in self.nodes for p in node[1:]]
        if len(set(ports)) != len(ports):
            raise ValueError(f"broker and controller ports overlap: {sorted(ports)}")
        return self

    @property
    def nodes(self) -> list[tuple[int, int, int]]:
        """(node id, client port, controller port) of each local broker, node ids from 1."""
        return [
            (i + 1, self.port + 2 * i, self.controller_port + 2 * i) for i in range(self.brokers)
        ]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{self.host}:{port}" for _, port, _ in self.nodes)

    def password_file(self, principal: str) -> Path:
        """The file holding ``principal``'s SCRAM password."""
        if principal not in KAFKA_PRINCIPALS:
            raise ConfigError(
                f"unknown Kafka principal {principal!r}; principals are "
                f"{', '.join(KAFKA_PRINCIPALS)}"
            )
        if self.password_dir is None:
            raise ConfigError("kafka.password_dir is not set (Settings pins it)")
        return self.password_dir / f"{principal}.password"

    def password(self, principal: str) -> str:
        """``principal``'s SCRAM password, read from its file.

        Raises:
            ConfigError: the file is missing or empty (one line naming it, never the value).
        """
        path = self.password_file(principal)
        try:
            password = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot read the Kafka password of {principal!r} ({exc.strerror}); "
                "`make up` creates it, in a cluster mount the KafkaUser's Secret there"
            ) from exc
        if not password:
            raise ConfigError(f"{path}: empty Kafka password for {principal!r}")
        return password

    def client_options(self, principal: str) -> dict[str, Any]:
        """``bootstrap_servers`` and the security options of a kafka-python client
        (``KafkaProducer``, ``KafkaConsumer``, ``KafkaAdminClient``) acting as ``principal``,
        and the failover option every client shares: the one place every feedrank client
        takes them from.

        Args:
            principal: the component (a key of :func:`kafka_access`, or a super user).
        """
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            # How fast it reconnects to a broker that was down (kafka-python: up to 30 s).
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
            # kafka-python refuses any response frame over 1,000,000 bytes by default
            # (InvalidReceiveError, then it drops the connection and refetches) while its
            # consumers ask for up to fetch_max_bytes (50 MiB): a consumer catching up on a
            # backlog of 1,000-candidate requests got 1 MB+ fetch responses and reconnected
            # on every one (seen in `make chaos` after a fault). Frames up to 64 MiB now.
            "receive_message_max_bytes": RECEIVE_MESSAGE_MAX_BYTES,
        }
        if self.security == "none":
            return options
        return options | {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": self.username_prefix + principal,
            "sasl_plain_password": self.password(principal),
        }

    def spark_options(self, principal: str) -> dict[str, str]:
        """The same as :meth:`client_options`, as options of Spark's Kafka source or sink."""
        client = self.client_options(principal)
        options = {"kafka.bootstrap.servers": client["bootstrap_servers"]}
        if self.security == "none":
            return options
        user, password = client["sasl_plain_username"], client["sasl_plain_password"]
        # Spark redacts sasl.jaas.config in its logs and UI (KafkaRedactionUtil).
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{user}" password="{password}";'
        )
        return options | {
            "kafka.security.protocol": client["security_protocol"],
            "kafka.sasl.mechanism": client["sasl_mechanism"],
            "kafka.sasl.jaas.config": jaas,
        }

    def producer_options(self) -> dict[str, Any]:
        """The options every feedrank ``KafkaProducer`` takes beside :meth:`client_options`:
        acks from all in-sync replicas, idempotence when ``idempotent_producers``, and the
        failover request timeout."""
        return {
            "acks": "all",
            "enable_idempotence": self.idempotent_producers,
            "request_timeout_ms": self.client_request_timeout_ms,
        }

    def group_consumer_options(self) -> dict[str, Any]:
        """The options every feedrank ``KafkaConsumer`` of a consumer group takes: how soon a
        dead member's partitions go to the others (beside :meth:`client_options`)."""
        return {
            "session_timeout_ms": self.group_session_timeout_ms,
            "heartbeat_interval_ms": self.group_heartbeat_interval_ms,
        }


class RedisConfig(Section):
    host: str = Field(default="127.0.0.1", description="redis-server host (loopback only).")
    port: int = Field(default=16379, description="redis-server port.")
    password: SecretStr | None = Field(
        default=None,
        description="AUTH password (set it through FEEDRANK_REDIS__PASSWORD, never in a YAML "
        "file); unset: read from password_file.",
    )
    password_file: Path | None = Field(
        default=None,
        description="File holding the AUTH password (default <paths.home>/secrets/"
        "redis.password, created with a random password, mode 0600, when feedrank starts "
        "redis-server and neither exists). Point it outside the checkout in production.",
    )

    serving_retries: int = Field(
        default=1,
        ge=0,
        description="Retries, without backoff, of a serve process's Redis call (feed cache, "
        "online-store reads) after a connection error: one reconnects a pooled connection "
        "that a Redis restart closed. redis-py 7's default (3 retries, exponential backoff "
        "from 1 s) held each request for seconds while Redis was down.",
    )
    serving_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Socket timeout of a serve process's Redis calls (a hung server; a stopped "
        "one refuses the connection at once).",
    )

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"


class SparkConfig(Section):
    master: str = Field(default="local[*]", description="Spark master URL.")
    shuffle_partitions: int = Field(
        default=4,
        ge=1,
        description="spark.sql.shuffle.partitions of a session; `features` and `training-data` "
        "raise it for their input (shuffle_input_rows_per_partition) up to "
        "shuffle_partitions_max. Small for small machines and the test worlds.",
    )
    shuffle_input_rows_per_partition: int = Field(
        default=1_000_000,
        ge=1,
        description="`features` and `training-data`: one shuffle partition per this many rows "
        "of Parquet they read (never fewer than shuffle_partitions). Rows, not bytes: the "
        "shuffles carry rows, and a table's bytes are mostly columns the jobs do not read. "
        "4 partitions spilled GBs on the 20,000-user world (docs/performance.md, #27).",
    )
    shuffle_partitions_max: int = Field(
        default=64, ge=1, description="Upper bound of the input-sized shuffle partitions."
    )
    driver_memory: str = Field(
        default="6g",
        description="spark.driver.memory (in local mode the executors' memory too). 6g holds "
        "the 2M-row broadcast of training_data.asof_broadcast_max_rows; 4g ran out of heap "
        "on it (docs/performance.md, #27). The heap grows only as a job needs it.",
    )
    driver_java_options: str = Field(
        default="-XX:+UseParallelGC",
        description="spark.driver.extraJavaOptions of the sessions feedrank starts (in local "
        "mode the executors run in the driver JVM too). The throughput collector: batch jobs "
        "wait for no pause, and G1's write barriers cost CPU (docs/performance.md, #27). "
        "`feedrank demo` adds -XX:TieredStopAtLevel=1 (C1 JIT only) for its few-MB jobs: "
        "training data 108 -> 74 CPU-s, features 65 -> 59; large runs want C2.",
    )
    shuffle_compress: bool = Field(
        default=False,
        description="spark.shuffle.compress and spark.shuffle.spill.compress. Off on one "
        "machine, where shuffle files never cross a network and lz4 is CPU the two cores "
        "lack (docs/performance.md, #27); the cluster profile turns it on.",
    )
    cluster_workers: int = Field(default=2, ge=1, description="Workers of the local cluster.")
    worker_cores: int = Field(default=1, ge=1, description="Cores per local worker.")
    worker_memory: str = Field(default="2g", description="Memory per local worker.")
    master_port: int = Field(default=17077, description="Local standalone master port.")
    master_webui_port: int = Field(default=18080, description="Local master web UI port.")
    event_log: bool = Field(
        default=False,
        description="Write Spark's event log under <home>/spark-events for a history server.",
    )
    submit_args: list[str] | None = Field(
        default=None,
        description="When set, the DAGs launch every Spark job with `spark-submit <these "
        "arguments> jobs/spark_entry.py …` (e.g. a k8s:// master in cluster mode) instead of "
        "in a local `feedrank` process.",
    )


class FeastConfig(Section):
    online_store: Literal["sqlite", "redis"] = Field(
        default="sqlite", description="Online store type."
    )
    offline_store: Literal["file", "spark"] = Field(
        default="file", description="Offline store type."
    )
    project: str = Field(default="feedrank", description="Feast project name.")
    feature_service: str = Field(default="ranker_v1", description="The model's contract.")


class AirflowConfig(Section):
    port: int = Field(default=18081, description="airflow standalone API/UI port.")


class SimulatorConfig(Section):
    seed: int = Field(default=7, description="Seed: same seed, same world, same bytes.")
    start_date: str = Field(default="2026-11-01", description="First simulated day (UTC).")
    days: int = Field(default=4, ge=1, description="Simulated days for a backfill.")
    users: int = Field(default=2_000, ge=10, description="Number of users.")
    author_share: float = Field(default=0.2, gt=0, le=1, description="Share of users who post.")
    topics: int = Field(default=12, ge=2, description="Number of tweet topics.")
    tweets_per_author_per_day: float = Field(default=2.0, gt=0, description="Mean posting rate.")
    requests_per_user_per_day: float = Field(default=3.0, gt=0, description="Mean feed fetches.")
    candidates_per_request: int = Field(
        default=200, ge=10, description="Candidates per request in backfills (serving: 1,000)."
    )
    serving_candidates: int = Field(default=1_000, ge=10, description="Candidates when live.")
    live_rate_rps: float = Field(default=20.0, gt=0, description="Live feed requests per s.")


class ClockConfig(Section):
    offset_s: int = Field(
        default=0,
        description="Seconds added to the wall clock wherever an event time is stamped (live "
        "simulator, serving's requested/served times and deadlines): the demo sets it to run "
        "its live phase on its --today when that is not the wall clock's day.",
    )
    max_event_lag_s: int = Field(
        default=300,
        ge=0,
        description="Most seconds an event's time may trail its arrival in Kafka (producer "
        "buffering and retries, clock skew): a landing run marks its tables complete up to "
        "its start less this.",
    )


class StreamFeaturesConfig(Section):
    idle_advance_after_s: float = Field(
        default=30.0,
        gt=0,
        description="stream-features: after this long without an engagement, the stream time "
        "advances with the wall clock (by the time elapsed since the last one), so the "
        "counters of a silent stream decay and leave the view online as they do offline.",
    )


class TrainingDataConfig(Section):
    attribution_window_s: int = Field(default=3600, ge=1, description="Engagement window.")
    negative_keep_rate: float = Field(
        default=0.25, gt=0, le=1, description="Share of all-negative impressions kept."
    )
    validation_days: int = Field(default=1, ge=1, description="Last days held out by time.")
    # The broadcast hash join of a 2M-row, 26-feature view (the bench's 100M-row run) took
    # 168-187 s against 225-255 s sorted, peaking at 6.8 GB RSS with a 6g driver; a 4g driver
    # ran out of heap on it (docs/performance.md, #27). Sized for spark.driver_memory: on a
    # cluster every executor holds the broadcast too, so lower it for small executors.
    asof_broadcast_max_rows: int = Field(
        default=2_000_000,
        ge=0,
        description="Point-in-time join: a feature table of at most this many rows is sent "
        "whole to every task instead of sorted with the impressions (jobs/training_data.py); "
        "0 turns the broadcast plan off.",
    )
    asof_key_filter_max_keys: int = Field(
        default=4_000_000,
        ge=0,
        description="Point-in-time join, sorted plan: when the examples hold at most this "
        "many distinct keys of a view, the view's rows of other keys are dropped before the "
        "sort (a broadcast semi-join on one 64-bit hash per key); 0 turns the filter off.",
    )
    bench_duckdb_memory_limit: str = Field(
        default="6GB",
        description="`feedrank bench training-data`: DuckDB's memory_limit; above it DuckDB "
        "spills to <home>/bench (its joins' state; the result is streamed out, not held).",
    )


class TrainingConfig(Section):
    n_estimators: int = Field(default=300, ge=1, description="Upper bound on trees per head.")
    max_depth: int = Field(default=6, ge=1, description="Tree depth.")
    learning_rate: float = Field(default=0.1, gt=0, description="Shrinkage.")
    early_stopping_rounds: int = Field(default=20, ge=1, description="On the validation day.")
    search_budget_s: float = Field(default=60.0, ge=0, description="Hyperparameter search time.")
    nthread: int = Field(default=2, ge=1, description="XGBoost threads.")
    num_workers: int = Field(default=2, ge=1, description="xgboost.spark workers (cluster).")
    day_ahead_calibration: bool = Field(
        # Off: on the demo's worlds it lowered RCE on every head it moved and pushed
        # Sunday's reply calibration out of the gate (docs/quality.md).
        default=False,
        description="Fit a per-head Platt calibration on the last training day, scored by "
        "heads trained without it (jobs/train_calibration.py).",
    )
    promote_min_auc: float = Field(
        default=0.55, ge=0, le=1, description="Promotion gate: every head's AUC must exceed this."
    )
    promote_calibration_tolerance: float = Field(
        default=0.25,
        gt=0,
        description="Promotion gate: |mean pred / mean label − 1| bound, widened by two "
        "sampling errors of the ratio (ratio / sqrt(held-out positives)).",
    )


class RankingConfig(Section):
    weights: dict[str, float] = Field(
        # In the spirit of Twitter's 2023 published heavy-ranker weights.
        default_factory=lambda: {
            "like": 0.5,
            "reply": 13.5,
            "retweet": 1.0,
            "click": 11.0,
            "negative": -74.0,
        },
        description="Per-head weight of the ranking score.",
    )
    author_diversity_floor: float = Field(
        default=0.25, ge=0, le=1, description="f in score·((1-f)·0.5^k + f)."
    )
    top_k: int = Field(default=50, ge=1, description="Items returned per feed.")
    heavy_ranker_cap: int = Field(
        default=300,
        ge=1,
        description="Light ranker prunes to this many before the heavy one; 300 of 1,000 kept "
        "99.5-99.9 % of the full ranking's true NDCG@10 at ~40 % of its heavy CPU "
        "(docs/performance.md).",
    )
    heavy_ranker_floor: int = Field(
        default=200,
        ge=1,
        description="Fewest candidates the light ranker prunes to when it prunes harder to "
        "meet serving.aim_ms.",
    )

    @model_validator(mode="after")
    def _weights_cover_heads(self) -> RankingConfig:
        if set(self.weights) != set(HEADS):
            raise ValueError(f"ranking weights must name exactly the heads {HEADS}")
        return self


SERVE_METRICS_PORT_STEP = 10


class ServingConfig(Section):
    budget_ms: int = Field(default=300, ge=300, le=400, description="Deadline after request.")
    aim_ms: int = Field(
        default=100,
        ge=1,
        description="Latency aim inside the deadline: when the heavy ranker on every "
        "candidate would answer later than requested_at + aim_ms (a backlog), the light ranker "
        "prunes harder, down to ranking.heavy_ranker_floor, so that it does not.",
    )
    metrics_port: int = Field(default=19100, description="prometheus /metrics port.")
    group_id: str = Field(default="feedrank-serving", description="Consumer group.")
    feature_log_sample: float = Field(
        default=1.0, ge=0, le=1, description="Share of impressions logged with features."
    )
    model_nthread: int = Field(
        default=1,
        ge=1,
        description="XGBoost threads per serve process when scoring (training.nthread is for "
        "training): several processes share the cores, so one each avoids oversubscription.",
    )
    feed_cache_ttl_s: int = Field(default=600, ge=1, description="Ranked feed cache TTL.")
    max_request_bytes: int = Field(default=262_144, description="Larger requests are refused.")
    processes: int = Field(
        default=0,
        ge=0,
        description="`feedrank serve` processes `make up` starts in the consumer group (the "
        "i-th, from 0, exposes /metrics on metrics_port + 10 i); 0: none, serve is started by "
        "hand or the demo.",
    )

    def process_metrics_port(self, index: int) -> int:
        """The ``/metrics`` port of the ``index``-th (from 0) of several serve processes.

        Ten apart, so the other endpoints' default ports (metrics_port + 1, + 2) stay free.
        """
        return self.metrics_port + SERVE_METRICS_PORT_STEP * index


class ObservabilityConfig(Section):
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Bind address of every /metrics endpoint (serve, stream-features, "
        "batch-metrics); 0.0.0.0 to let a Prometheus on another host scrape them.",
    )
    stream_features_port: int = Field(
        default=19101, ge=0, le=65535, description="/metrics port of stream-features (0: off)."
    )
    batch_port: int = Field(
        default=19102,
        ge=0,
        le=65535,
        description="/metrics port of `feedrank batch-metrics`: the outcomes batch work "
        "recorded in the run folder (monitor, validation, training, promotion, landing).",
    )
    prometheus_port: int = Field(
        default=19090, ge=1, le=65535, description="Local Prometheus (`make prometheus`) port."
    )
    scrape_interval_s: float = Field(default=15.0, gt=0, description="Prometheus scrape interval.")
    evaluation_interval_s: float = Field(
        default=15.0, gt=0, description="Prometheus rule evaluation interval."
    )


class MlflowConfig(Section):
    tracking_uri: str | None = Field(
        default=None,
        description="A shared MLflow tracking server (http://host:5000) for runs, the model "
        "registry and its artifacts; default: embedded, a SQLite store and file artifacts under "
        "<home>/mlflow (no server to run).",
    )
    experiment: str = Field(default="feedrank", description="MLflow experiment of the runs.")
    model_name: str = Field(
        default="feedrank-ranker", description="Registered model that the gate adds versions to."
    )
    ui_port: int = Field(
        default=19500, ge=1, le=65535, description="`make mlflow-ui` port (127.0.0.1)."
    )


class MonitoringConfig(Section):
    psi_alert: float = Field(default=0.2, ge=0, description="PSI above this is drift.")
    skew_mismatch_alert: float = Field(default=0.01, ge=0, description="Skew mismatch share.")
    min_auc: float = Field(default=0.6, ge=0, le=1, description="Live AUC below this alerts.")
    null_rate_max: float = Field(default=0.05, ge=0, le=1, description="Null share per column.")
    label_rate_drop_max: float = Field(
        default=0.5, ge=0, le=1, description="Relative label-rate drop that fails the gate."
    )
    new_category_share_max: float = Field(
        default=0.02, ge=0, le=1, description="Unseen category share that fails the gate."
    )


class ExperimentConfig(Section):
    salt: str = Field(default="feedrank-exp-1", description="Hash salt; a new salt reshuffles.")
    arms: dict[str, float] = Field(
        # Default: no experiment, everyone gets the champion. The demo runs
        # {"control": 0.45, "treatment": 0.45, "oracle": 0.1}.
        default_factory=lambda: {"control": 0.0, "treatment": 1.0},
        description="Arm -> traffic share. control: chronological; treatment: champion; "
        "challenger: experiment.challenger_version; oracle: the simulator's truth (simulation "
        "only).",
    )
    challenger_version: str | None = Field(
        default=None, description="Registry version of the challenger (arm or shadow)."
    )
    shadow: bool = Field(
        default=False, description="Also score model-ranked requests with the challenger."
    )
    counterfactual: bool = Field(
        default=False,
        description="Rank every request with every policy and record each order's expected "
        "outcome under the simulator's truth (simulation only; paired comparison).",
    )

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> ExperimentConfig:
        if "control" not in self.arms or abs(sum(self.arms.values()) - 1.0) > 1e-9:
            raise ValueError("experiment arms need a 'control' arm and shares summing to 1")
        if any(share < 0 for share in self.arms.values()):
            raise ValueError("experiment arm shares must not be negative")
        return self


class Settings(BaseSettings):
    """The whole resolved configuration of one feedrank process."""

    model_config = SettingsConfigDict(
        env_prefix="FEEDRANK_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    profile: Literal["local", "redis", "cluster", "secure"] = Field(
        default="local", description="Which profile YAML was layered under the environment."
    )
    paths: PathsConfig = PathsConfig()
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    spark: SparkConfig = SparkConfig()
    feast: FeastConfig = FeastConfig()
    airflow: AirflowConfig = AirflowConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    clock: ClockConfig = ClockConfig()
    stream_features: StreamFeaturesConfig = StreamFeaturesConfig()
    training_data: TrainingDataConfig = TrainingDataConfig()
    training: TrainingConfig = TrainingConfig()
    ranking: RankingConfig = RankingConfig()
    serving: ServingConfig = ServingConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    mlflow: MlflowConfig = MlflowConfig()
    experiment: ExperimentConfig = ExperimentConfig()

    @model_validator(mode="after")
    def _pin_secret_files(self) -> Settings:
        # Resolved once, here: a copy of the settings with another run folder (benchmarks,
        # test stores) still talks to the same redis-server with the same password.
        if self.redis.password_file is None:
            pinned = self.redis.model_copy(
                update={"password_file": self.paths.home / "secrets" / "redis.password"}
            )
            object.__setattr__(self, "redis", pinned)
        if self.kafka.password_dir is None:
            kafka = self.kafka.model_copy(
                update={"password_dir": self.paths.home / "secrets" / "kafka"}
            )
            object.__setattr__(self, "kafka", kafka)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ProfileSource(settings_cls))


class _ProfileSource(PydanticBaseSettingsSource):
    """Reads ``profiles/<FEEDRANK_PROFILE>.yaml``, then ``FEEDRANK_CONFIG_FILE`` over it.

    Both with ``${ENV}`` substitution. Unreadable files, YAML syntax errors, a file that is not
    a mapping, and ``FEEDRANK_<NAME>__…`` variables whose section does not exist raise
    :class:`ConfigError`; wrong values and unknown keys are left to pydantic's validation.
    """

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        _check_env_sections(self.settings_cls)
        profile = os.environ.get("FEEDRANK_PROFILE", "local")
        if profile not in PROFILES:
            raise ConfigError(
                f"FEEDRANK_PROFILE: unknown profile {profile!r}; "
                f"choose one of {', '.join(PROFILES)}"
            )
        data = _read_yaml(PROFILES_DIR / f"{profile}.yaml")
        extra = os.environ.get(CONFIG_FILE_ENV)
        if extra:
            data = _merged(data, _read_yaml(Path(extra).expanduser()))
        data["profile"] = profile
        return data


# An operator's own YAML, layered over the profile and under the environment.
CONFIG_FILE_ENV = "FEEDRANK_CONFIG_FILE"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(os.path.expandvars(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_env_sections(settings_cls: type[BaseSettings]) -> None:
    """``FEEDRANK_KAFKAA__PORT`` names no section: pydantic-settings would ignore it silently."""
    sections = {name.upper() for name in settings_cls.model_fields}
    for key in sorted(os.environ):
        if key.startswith("FEEDRANK_") and "__" in key:
            section = key.removeprefix("FEEDRANK_").split("__", 1)[0]
            if section not in sections:
                raise ConfigError(
                    f"{key}: unknown section {section.lower()!r}; sections are "
                    f"{', '.join(sorted(s.lower() for s in sections))}"
                )


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings (resolved once; call ``get_settings.cache_clear()`` to redo)."""
    return Settings()


def redis_password_file(settings: Settings) -> Path:
    """Where the Redis password is kept when FEEDRANK_REDIS__PASSWORD is not set."""
    # Pinned by Settings' validator; the fallback covers a RedisConfig built by hand.
    return settings.redis.password_file or settings.paths.home / "secrets" / "redis.password"


def redis_password(settings: Settings) -> str | None:
    """The Redis AUTH password: the setting, else the password file's content, else None."""
    if settings.redis.password is not None:
        return settings.redis.password.get_secret_value()
    path = redis_password_file(settings)
    return path.read_text().strip() if path.is_file() else None


def redis_client_kwargs(settings: Settings) -> dict[str, Any]:
    """``host``, ``port`` and ``password`` for ``redis.Redis(**…)``: one place for every client."""
    return {
        "host": settings.redis.host,
        "port": settings.redis.port,
        "password": redis_password(settings),
    }


def redis_serving_options(settings: Settings) -> dict[str, Any]:
    """``socket_timeout`` and ``retry`` for the ``redis.Redis`` clients of a serve process:
    fail fast, so a request is answered around a Redis outage instead of waiting it out."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_timeout": settings.redis.serving_timeout_s,
        "retry": Retry(NoBackoff(), settings.redis.serving_retries),
    }


def dump_settings(settings: Settings) -> str:
    """The resolved configuration as YAML, for ``feedrank config`` and for service logs."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
