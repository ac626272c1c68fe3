"""The cluster profile's replicated Kafka: 3 KRaft brokers, every topic at replication factor 3
and min.insync.replicas 2; acks=all writes and reads go on after a broker is killed (-9).

The brokers run from their own run folder on ports 200 above the session's (tests/conftest.py),
so the session's single broker, which the other tests use, is never touched.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from feedrank import services
from feedrank.config import Settings, get_settings
from feedrank.services.kafka_broker import describe_topics
from feedrank.services.process import owned_pid

pytestmark = pytest.mark.integration

PORT_OFFSET = 200


@pytest.fixture
def cluster(tmp_path: Path) -> Settings:
    base = get_settings().kafka
    settings = Settings(
        paths={"home": tmp_path / "run"},
        kafka={
            "port": base.port + PORT_OFFSET,
            "controller_port": base.controller_port + PORT_OFFSET,
            # The cluster profile's Kafka section (feedrank/profiles/cluster.yaml).
            "brokers": 3,
            "replication_factor": 3,
            "min_insync_replicas": 2,
            "idempotent_producers": True,
        },
    )
    try:
        yield settings
    finally:
        services.kafka_down(settings)


def _leader(admin, topic: str, partition: int) -> int:
    (described,) = describe_topics(admin, [topic])
    return next(p["leader"] for p in described["partitions"] if p["partition"] == partition)


def _read(consumer, values: set[bytes], timeout_s: float) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while not values <= set(got) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got += [r.value for r in records]
    return got


@pytest.mark.timeout(300)
def test_replicated_topics_survive_a_killed_broker(cluster: Settings) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import ConfigResource, ConfigResourceType

    assert services.kafka_up(cluster) is True
    nodes = services.broker_nodes(cluster)
    pids = {n.node_id: owned_pid(cluster, n.name, str(n.config)) for n in nodes}
    assert len(nodes) == 3 and all(pids.values())

    admin = KafkaAdminClient(bootstrap_servers=cluster.kafka.bootstrap_servers)
    producer = consumer = None
    try:
        # Every declared topic: 3 replicas per partition, min.insync.replicas 2.
        described = describe_topics(admin, list(cluster.kafka.topics))
        assert {t["topic"] for t in described} == set(cluster.kafka.topics)
        for topic in described:
            assert {len(p["replicas"]) for p in topic["partitions"]} == {3}, topic["topic"]
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in cluster.kafka.topics]
        for response in admin.describe_configs(resources):
            for resource in response.resources:
                name, entries = resource[3], resource[4]
                configs = {entry[0]: entry[1] for entry in entries}
                assert configs["min.insync.replicas"] == "2", name

        topic = "follows"
        producer = KafkaProducer(
            bootstrap_servers=cluster.kafka.bootstrap_servers,
            **cluster.kafka.producer_options(),
        )
        assert producer.config["acks"] == -1 and producer.config["enable_idempotence"]
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=cluster.kafka.bootstrap_servers,
            group_id=f"cluster-test-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        before = {f"before-{i}".encode() for i in range(30)}
        for value in before:
            producer.send(topic, value=value, partition=0).get(timeout=60)
        assert set(_read(consumer, before, 60)) == before
        consumer.commit()

        # kill -9 the leader of the partition being written.
        victim = _leader(admin, topic, 0)
        os.kill(pids[victim], signal.SIGKILL)

        after = {f"after-{i}".encode() for i in range(30)}
        futures = [producer.send(topic, value=v, partition=0) for v in sorted(after)]
        metadata = [future.get(timeout=120) for future in futures]
        assert all(m.partition == 0 for m in metadata)
        got = _read(consumer, after, 120)
        consumer.commit()
        assert set(got) == after and len(got) == len(after)  # each once, none lost
        assert _leader(admin, topic, 0) not in (victim, -1)
    finally:
        for client in (producer, consumer, admin):
            if client is not None:
                client.close()
    services.kafka_down(cluster)
    assert all(owned_pid(cluster, n.name, str(n.config)) is None for n in nodes)
