"""The local Apache Kafka KRaft broker: render its config, start, stop, provision the topics."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.readiness import kafka_ready
from feedrank.services.jars import fetch_jars, kafka_jars_dir
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


def kafka_config(settings: Settings) -> Path:
    return kafka_dir(settings) / "server.properties"


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
    path.write_text(cluster_id + "\n")
    return cluster_id


def java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise FeedrankError("java not found: install a JDK 17+ (apt-get install -y default-jdk)")
    return str(java)


def _prepare_kafka(settings: Settings) -> tuple[Path, Path]:
    """Render server.properties and log4j2.properties; format storage once."""
    fetch_jars(settings)
    folder = kafka_dir(settings)
    data_dir = folder / "data"
    config = render_template(
        INFRA / "kafka" / "server.properties.template",
        kafka_config(settings),
        host=settings.kafka.host,
        port=settings.kafka.port,
        controller_port=settings.kafka.controller_port,
        log_dirs=data_dir,
        num_partitions=3,
        offsets_partitions=10,
    )
    log4j = render_template(
        INFRA / "kafka" / "log4j2.properties.template",
        folder / "log4j2.properties",
        log_file=settings.paths.logs / "kafka.log",
    )
    # StorageTool costs a JVM start; --ignore-formatted makes it safe, the check makes it free.
    if not (data_dir / "meta.properties").is_file():
        argv = [
            java(), f"-Dlog4j2.configurationFile={log4j}", "-cp",
            f"{kafka_jars_dir(settings)}/*", "kafka.tools.StorageTool", "format",
            "--standalone", "--ignore-formatted",
            "--cluster-id", _cluster_id(settings), "--config", str(config),
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise FeedrankError(
                f"formatting Kafka storage failed: {(result.stderr or result.stdout).strip()}"
            )
        log.info("formatted Kafka storage: %s", result.stdout.strip())
    return config, log4j


def topic_partition_counts(admin: KafkaAdminClient) -> dict[str, int]:
    """Partitions per topic in the cluster, as a ``KafkaAdminClient`` sees them."""
    return {t["topic"]: len(t["partitions"]) for t in admin.describe_topics()}


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


def ensure_topics(settings: Settings | None = None) -> list[str]:
    """Create every topic of ``settings.kafka.topics``; align existing ones. Idempotent.

    Existing topics get their declared ``retention.ms`` / ``max.message.bytes`` and are grown
    to the declared partition count (Kafka cannot shrink a topic; that is reported).

    Returns:
        The names of the topics created by this call.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

    settings = resolve(settings)
    declared = settings.kafka.topics
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, client_id="feedrank-topics"
    )
    try:
        existing = topic_partition_counts(admin)
        missing = [
            NewTopic(
                name,
                num_partitions=topic.partitions,
                replication_factor=1,
                topic_configs={
                    "retention.ms": str(topic.retention_ms),
                    "max.message.bytes": str(topic.max_message_bytes),
                },
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
                        ConfigResourceType.TOPIC,
                        name,
                        configs={
                            "retention.ms": str(declared[name].retention_ms),
                            "max.message.bytes": str(declared[name].max_message_bytes),
                        },
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
        return sorted(t.name for t in missing)
    finally:
        admin.close()


def kafka_up(settings: Settings | None = None) -> bool:
    """Start the local KRaft broker unless it runs, wait until ready, provision topics.

    Returns:
        True if this call started the broker; False if it was already running and ready.

    Raises:
        FeedrankError: the broker exited or did not become ready in
            ``kafka.ready_timeout_s`` (the message carries the end of its log).
    """
    settings = resolve(settings)
    with service_lock(settings, "kafka"):
        config = kafka_config(settings)
        pid = owned_pid(settings, "kafka", str(config))
        timeout_s = settings.kafka.ready_timeout_s
        if pid is not None:
            if kafka_ready(settings, timeout_s):
                ensure_topics(settings)
                return False
            log.warning("kafka pid %s never became ready; restarting it", pid)
            terminate(settings, "kafka", pid)
        elif kafka_ready(settings):
            # Someone else's broker on our port (another run folder): use it, never stop it.
            log.warning(
                "a broker not started from %s answers on %s; using it",
                settings.paths.home,
                settings.kafka.bootstrap_servers,
            )
            ensure_topics(settings)
            return False
        require_free_ports(
            "Kafka", settings.kafka.host, settings.kafka.port, settings.kafka.controller_port
        )
        config, log4j = _prepare_kafka(settings)
        say(f"starting Kafka {settings.kafka.version} on {settings.kafka.bootstrap_servers}")
        started = time.monotonic()
        argv = [
            java(), "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={settings.paths.logs}",
            "-cp", f"{kafka_jars_dir(settings)}/*", _KAFKA_MAIN, str(config),
        ]  # fmt: skip
        pid = spawn(settings, "kafka", argv, output="kafka.out")
        deadline = started + timeout_s
        while not kafka_ready(settings, min(1.0, max(deadline - time.monotonic(), 0.0))):
            if not is_running(pid):
                pid_file(settings, "kafka").unlink(missing_ok=True)
                raise FeedrankError(
                    f"Kafka exited during start-up; see {settings.paths.logs / 'kafka.log'}:\n"
                    + log_tail(settings.paths.logs / "kafka.out")
                )
            if time.monotonic() >= deadline:
                terminate(settings, "kafka", pid)
                raise FeedrankError(
                    f"Kafka not ready after {timeout_s:.0f} s; see "
                    f"{settings.paths.logs / 'kafka.log'}"
                )
        say(f"Kafka ready in {time.monotonic() - started:.1f} s (pid {pid})")
        created = ensure_topics(settings)
        if created:
            say(f"created {len(created)} topics")
        return True


def kafka_down(settings: Settings | None = None) -> bool:
    """Stop the broker started from this run folder and wait for it to exit.

    Returns:
        True if a broker was stopped; False if none of ours was running.
    """
    settings = resolve(settings)
    with service_lock(settings, "kafka"):
        pid = owned_pid(settings, "kafka", str(kafka_config(settings)))
        if pid is None:
            return False
        terminate(settings, "kafka", pid)
        return True
