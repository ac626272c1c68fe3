"""The local Apache Kafka KRaft brokers: render their configs, start, stop, provision the topics.

Long because: a quorum starts as one unit (every node before any wait, ports raced by client
sockets, the offsets topic created while all run), and its topics are provisioned here too.

One broker by default (a single-node dynamic quorum, run folder ``kafka/``); ``kafka.brokers``
> 1 (the cluster profile) starts that many combined broker+controller nodes on loopback, a
static quorum of all of them, each with its folder ``kafka/node-<id>/``, pid file
``kafka-<id>`` and log ``kafka-<id>.log``. Every topic is created with
``kafka.replication_factor`` replicas and ``kafka.min_insync_replicas``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.readiness import kafka_ready
from feedrank.services.jars import fetch_jars, kafka_jars_dir
from feedrank.services.kafka_security import (
    check_users,
    ensure_passwords,
    format_arguments,
    formatted,
    listener_values,
    protect,
    sync_acls,
)
from feedrank.services.process import (
    INFRA,
    is_running,
    log,
    log_tail,
    owned_pid,
    pid_file,
    render_template,
    require_free_ports,
    resolve,
    say,
    service_lock,
    spawn,
    terminate,
)

if TYPE_CHECKING:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

_KAFKA_MAIN = "kafka.Kafka"


def kafka_dir(settings: Settings) -> Path:
    return settings.paths.home / "kafka"


@dataclass(frozen=True)
class BrokerNode:
    """One local KRaft node (broker and controller in one JVM)."""

    name: str  # pid file and log name
    node_id: int
    port: int
    controller_port: int
    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "server.properties"


def broker_nodes(settings: Settings) -> list[BrokerNode]:
    """The local nodes of ``settings.kafka``: ``kafka`` alone, or ``kafka-1``…``kafka-N``."""
    kafka = settings.kafka
    if kafka.brokers == 1:
        return [BrokerNode("kafka", 1, kafka.port, kafka.controller_port, kafka_dir(settings))]
    return [
        BrokerNode(
            f"kafka-{node_id}", node_id, port, controller, kafka_dir(settings) / f"node-{node_id}"
        )
        for node_id, port, controller in kafka.nodes
    ]


def broker_pids(settings: Settings) -> list[int]:
    """Pids of the broker nodes this run folder started (none when another owns the port)."""
    found = (owned_pid(settings, n.name, str(n.config)) for n in broker_nodes(settings))
    return [pid for pid in found if pid is not None]


def _cluster_id(settings: Settings) -> str:
    """This run folder's KRaft cluster id (a Kafka-style base64 UUID), created once."""
    path = kafka_dir(settings) / "cluster.id"
    if path.is_file():
        return path.read_text().strip()
    cluster_id = "-"
    # Kafka's own Uuid.randomUuid() refuses ids starting with '-' (they read as CLI flags).
    while cluster_id.startswith("-"):
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole or not at all: a reader never sees an empty id.
    partial = path.with_suffix(".partial")
    partial.write_text(cluster_id + "\n")
    partial.rename(path)
    return cluster_id


def java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise FeedrankError("java not found: install a JDK 17+ (apt-get install -y default-jdk)")
    return str(java)


def _prepare_node(settings: Settings, node: BrokerNode) -> Path:
    """Render the node's server.properties and log4j2.properties; format its storage once.

    Returns:
        The log4j2 configuration.
    """
    kafka = settings.kafka
    data_dir = node.folder / "data"
    if kafka.brokers == 1:
        quorum = f"controller.quorum.bootstrap.servers={kafka.host}:{node.controller_port}"
    else:
        voters = ",".join(f"{i}@{kafka.host}:{c}" for i, _, c in kafka.nodes)
        quorum = f"controller.quorum.voters={voters}"
    protect(node.config)  # under kafka.security: scram it holds the broker's password
    config = render_template(
        INFRA / "kafka" / "server.properties.template",
        node.config,
        host=kafka.host,
        node_id=node.node_id,
        quorum=quorum,
        port=node.port,
        controller_port=node.controller_port,
        log_dirs=data_dir,
        num_partitions=3,
        offsets_partitions=10,
        replication_factor=kafka.replication_factor,
        min_insync=kafka.min_insync_replicas,
        broker_session_timeout_ms=kafka.broker_session_timeout_ms,
        broker_heartbeat_interval_ms=kafka.broker_heartbeat_interval_ms,
        **listener_values(settings),
    )
    log4j = render_template(
        INFRA / "kafka" / "log4j2.properties.template",
        node.folder / "log4j2.properties",
        log_file=settings.paths.logs / f"{node.name}.log",
    )
    # StorageTool costs a JVM start; --ignore-formatted makes it safe, the check makes it free.
    if not (data_dir / "meta.properties").is_file():
        # A static quorum (controller.quorum.voters) is formatted without a voter flag.
        standalone = ["--standalone"] if kafka.brokers == 1 else []
        argv = [
            java(), f"-Dlog4j2.configurationFile={log4j}", "-cp",
            f"{kafka_jars_dir(settings)}/*", "kafka.tools.StorageTool", "format",
            *standalone, "--ignore-formatted",
            "--cluster-id", _cluster_id(settings), "--config", str(config),
            *format_arguments(settings, node.folder),
        ]  # fmt: skip
        result = None
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
        finally:
            formatted(settings, node.folder, result is not None and result.returncode == 0)
        if result.returncode != 0:
            raise FeedrankError(
                f"formatting Kafka storage of {node.name} failed: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        log.info("formatted Kafka storage of %s: %s", node.name, result.stdout.strip())
    check_users(settings, node.folder)
    return log4j


def describe_topics(
    admin: KafkaAdminClient, topics: list[str] | None = None, attempts: int = 20
) -> list[dict[str, Any]]:
    """``admin.describe_topics(topics)``, retried on a retriable error (the broker asked was
    killed: the next attempt asks another) and while kafka-python cannot parse the answer.

    kafka-python 2.3 decodes a metadata response's "authorized operations" bit field even
    when a broker leaves it unset (INT_MIN), and raises ``ValueError: 31 is not a valid
    ACLOperation``; seen here now and then while the brokers of a cluster start or a leader
    moves. The next request gets a full answer.
    """
    from kafka.errors import KafkaError

    for attempt in range(attempts):
        try:
            return admin.describe_topics(topics)
        except (ValueError, KafkaError) as exc:
            retriable = isinstance(exc, ValueError) or exc.retriable
            if not retriable or attempt == attempts - 1:
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


def topic_partition_counts(admin: KafkaAdminClient) -> dict[str, int]:
    """Partitions per topic in the cluster, as a ``KafkaAdminClient`` sees them."""
    return {t["topic"]: len(t["partitions"]) for t in describe_topics(admin)}


def create_topics(admin: KafkaAdminClient, topics: list[NewTopic], timeout_s: float = 30.0) -> None:
    """Create ``topics`` (``kafka.admin.NewTopic``) and wait until the cluster's metadata lists
    every one with all its partitions, so producers and consumers find them at once.

    Raises:
        kafka.errors.KafkaError: the broker refused a topic (the admin client raises it).
        FeedrankError: the topics did not show up in the metadata within ``timeout_s``.
    """
    admin.create_topics(topics)
    deadline = time.monotonic() + timeout_s
    while True:
        counts = topic_partition_counts(admin)
        if all(counts.get(t.name) == t.num_partitions for t in topics):
            return
        if time.monotonic() >= deadline:
            raise FeedrankError(f"topics {[t.name for t in topics]} not in the metadata yet")
        time.sleep(0.1)


def _topic_configs(settings: Settings, name: str) -> dict[str, str]:
    topic = settings.kafka.topics[name]
    return {
        "retention.ms": str(topic.retention_ms),
        "max.message.bytes": str(topic.max_message_bytes),
        "min.insync.replicas": str(settings.kafka.min_insync_replicas),
    }


def ensure_topics(settings: Settings | None = None) -> list[str]:
    """Create every topic of ``settings.kafka.topics``; align existing ones. Idempotent.

    Topics get ``kafka.replication_factor`` replicas; existing ones get their declared
    ``retention.ms`` / ``max.message.bytes`` / ``min.insync.replicas`` and are grown to the
    declared partition count (Kafka cannot shrink a topic, nor does this change an existing
    topic's replica count; both are reported).

    Returns:
        The names of the topics created by this call.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

    settings = resolve(settings)
    declared = settings.kafka.topics
    admin = KafkaAdminClient(**settings.kafka.client_options("admin"), client_id="feedrank-topics")
    try:
        described = {t["topic"]: t["partitions"] for t in describe_topics(admin)}
        existing = {name: len(parts) for name, parts in described.items()}
        missing = [
            NewTopic(
                name,
                num_partitions=topic.partitions,
                replication_factor=settings.kafka.replication_factor,
                topic_configs=_topic_configs(settings, name),
            )
            for name, topic in declared.items()
            if name not in existing
        ]
        if missing:
            create_topics(admin, missing)
            log.info("created topics %s", sorted(t.name for t in missing))
        present = [name for name in declared if name in existing]
        if present:
            admin.alter_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC, name, configs=_topic_configs(settings, name)
                    )
                    for name in present
                ]
            )
        grow = {n: declared[n].partitions for n in present if existing[n] < declared[n].partitions}
        if grow:
            admin.create_partitions({n: NewPartitions(count) for n, count in grow.items()})
            log.info("grew partitions of %s", grow)
        for name in present:
            if existing[name] > declared[name].partitions:
                log.warning(
                    "topic %s has %d partitions, config declares %d (Kafka cannot shrink)",
                    name, existing[name], declared[name].partitions,
                )  # fmt: skip
            replicas = {len(p["replicas"]) for p in described[name]}
            if replicas != {settings.kafka.replication_factor}:
                log.warning(
                    "topic %s has %s replicas per partition, config declares %d",
                    name, sorted(replicas), settings.kafka.replication_factor,
                )  # fmt: skip
        if settings.kafka.replication_factor > 1:
            _create_offsets_topic(admin, settings.serving.group_id)
        sync_acls(settings, admin)
        return sorted(t.name for t in missing)
    finally:
        admin.close()


def _create_offsets_topic(admin: KafkaAdminClient, group_id: str, timeout_s: float = 30.0) -> None:
    """Have the cluster create ``__consumer_offsets`` now, while every broker runs.

    Kafka creates it at the first coordinator lookup, with ``offsets.topic.replication.factor``
    replicas: a lookup made while a broker is down would fail until it is back, so the first
    consumer group after a broker failure could not start.
    """
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # A coordinator lookup and an offset fetch (describe_consumer_groups would parse
            # the authorized-operations field that describe_topics' docstring is about).
            admin.list_consumer_group_offsets(group_id)
            return
        except KafkaError as exc:  # coordinator not available, or still loading
            if not exc.retriable or time.monotonic() >= deadline:
                raise FeedrankError(f"__consumer_offsets not created: {exc}") from exc
            time.sleep(0.2)


_REBIND_ATTEMPTS = 2
_PORT_WAIT_S = 10.0


def _wait_for_free_ports(settings: Settings, node: BrokerNode) -> None:
    """:func:`require_free_ports`, waiting a little first: our ports lie in Linux's ephemeral
    range (32768-60999), where a short-lived client socket may hold one for a moment."""
    deadline = time.monotonic() + _PORT_WAIT_S
    while True:
        try:
            require_free_ports(
                f"Kafka {node.name}", settings.kafka.host, node.port, node.controller_port
            )
            return
        except FeedrankError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _lost_its_port(log_file: Path) -> bool:
    """Whether the node's last start ended on a port taken between our check and its bind."""
    return "Address already in use" in log_tail(log_file, lines=200)


def _start_node(settings: Settings, node: BrokerNode, log4j: Path) -> int:
    argv = [
        java(), "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        f"-Dkafka.logs.dir={settings.paths.logs}",
        "-cp", f"{kafka_jars_dir(settings)}/*", _KAFKA_MAIN, str(node.config),
    ]  # fmt: skip
    return spawn(settings, node.name, argv, output=f"{node.name}.out")


def kafka_up(settings: Settings | None = None) -> bool:
    """Start the local KRaft broker(s) not running, wait until every one is ready, provision
    the topics.

    Returns:
        True if this call started a broker; False if all were already running and ready.

    Raises:
        FeedrankError: a broker exited or the cluster did not become ready in
            ``kafka.ready_timeout_s`` (the message carries the end of its log).
    """
    settings = resolve(settings)
    with service_lock(settings, "kafka"):
        nodes = broker_nodes(settings)
        pids = {n.name: owned_pid(settings, n.name, str(n.config)) for n in nodes}
        timeout_s = settings.kafka.ready_timeout_s
        if all(pid is not None for pid in pids.values()):
            if kafka_ready(settings, timeout_s):
                ensure_topics(settings)
                return False
            log.warning("kafka pids %s never became ready; restarting them", list(pids.values()))
            for node in nodes:
                terminate(settings, node.name, pids[node.name])
                pids[node.name] = None
        elif not any(pids.values()) and kafka_ready(settings):
            # Someone else's broker on our port (another run folder): use it, never stop it.
            log.warning(
                "a broker not started from %s answers on %s; using it",
                settings.paths.home,
                settings.kafka.bootstrap_servers,
            )
            ensure_topics(settings)
            return False
        fetch_jars(settings)
        if settings.kafka.security == "scram":
            ensure_passwords(settings)
        down = [n for n in nodes if pids[n.name] is None]
        say(
            f"starting Kafka {settings.kafka.version} on "
            + ", ".join(f"{settings.kafka.host}:{n.port}" for n in down)
        )
        started = time.monotonic()
        for node in down:
            _wait_for_free_ports(settings, node)
        # Formatting costs a JVM start per node: all at once, with one cluster id made first
        # (made by each thread, two nodes got different ids, one of them empty).
        _cluster_id(settings)
        with ThreadPoolExecutor(max_workers=len(down)) as pool:
            log4js = list(pool.map(lambda node: _prepare_node(settings, node), down))
        # Every node before any wait: a static quorum elects a leader only once a majority runs.
        for node, log4j in zip(down, log4js, strict=True):
            pids[node.name] = _start_node(settings, node, log4j)
        deadline = started + timeout_s
        rebinds = dict.fromkeys((n.name for n in down), _REBIND_ATTEMPTS)
        while not kafka_ready(settings, min(1.0, max(deadline - time.monotonic(), 0.0))):
            for node, log4j in zip(down, log4js, strict=True):
                if is_running(pids[node.name]):
                    continue
                pid_file(settings, node.name).unlink(missing_ok=True)
                log_file = settings.paths.logs / f"{node.name}.log"
                if rebinds[node.name] > 0 and _lost_its_port(log_file):
                    # A client socket took the port between the check and the bind (see
                    # _wait_for_free_ports); it is free again a moment later.
                    rebinds[node.name] -= 1
                    log.warning("%s lost its port to another socket; starting it again", node.name)
                    time.sleep(1.0)
                    pids[node.name] = _start_node(settings, node, log4j)
                    continue
                _stop_nodes(settings, {n.name: pids[n.name] for n in down if n is not node})
                raise FeedrankError(
                    f"Kafka {node.name} exited during start-up; see {log_file}:\n"
                    + log_tail(settings.paths.logs / f"{node.name}.out")
                )
            if time.monotonic() >= deadline:
                _stop_nodes(settings, {n.name: pids[n.name] for n in down})
                raise FeedrankError(
                    f"Kafka not ready after {timeout_s:.0f} s; see "
                    f"{settings.paths.logs / (nodes[0].name + '.log')}"
                )
        say(
            f"Kafka ready in {time.monotonic() - started:.1f} s (pid "
            + ", ".join(str(pids[n.name]) for n in down)
            + ")"
        )
        created = ensure_topics(settings)
        if created:
            say(f"created {len(created)} topics")
        return True


def _stop_nodes(settings: Settings, pids: dict[str, int | None]) -> None:
    """SIGTERM every node at once, then wait for each (a node stopped alone would wait for
    the quorum the others already left)."""
    running = {name: pid for name, pid in pids.items() if pid is not None}
    if len(running) > 1:
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    for name, pid in running.items():
        terminate(settings, name, pid)


def kafka_down(settings: Settings | None = None) -> bool:
    """Stop the broker(s) started from this run folder and wait for them to exit.

    Returns:
        True if a broker was stopped; False if none of ours was running.
    """
    settings = resolve(settings)
    with service_lock(settings, "kafka"):
        pids = {n.name: owned_pid(settings, n.name, str(n.config)) for n in broker_nodes(settings)}
        if not any(pids.values()):
            return False
        _stop_nodes(settings, pids)
        return True
