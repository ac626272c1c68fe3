"""The real local KRaft broker: keyed produce/consume through a consumer group, topics."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from feedrank import services
from feedrank.config import Settings

MESSAGES = 1_000
KEYS = 50


def _admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)


@pytest.mark.integration
def test_keyed_messages_reach_one_partition_per_key_and_offsets_commit(kafka: Settings) -> None:
    topic = f"foundation-keyed-{uuid.uuid4().hex[:8]}"
    admin = _admin(kafka)
    services.create_topics(admin, [NewTopic(topic, num_partitions=3, replication_factor=1)])
    admin.close()

    producer = KafkaProducer(bootstrap_servers=kafka.kafka.bootstrap_servers, acks="all")
    sent = {}
    for i in range(MESSAGES):
        key, value = f"user-{i % KEYS}".encode(), f"event-{i}".encode()
        sent[value] = key
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    group = f"foundation-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.kafka.bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15_000,
    )
    received: dict[bytes, bytes] = {}
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    for record in consumer:
        received[record.value] = record.key
        partitions_of_key[record.key].add(record.partition)
        if len(received) == MESSAGES:
            break
    consumer.commit()
    assigned = consumer.assignment()
    end_offsets = consumer.end_offsets(list(assigned))
    committed = {tp: consumer.committed(tp) for tp in assigned}
    consumer.close()

    assert received == sent
    assert all(len(parts) == 1 for parts in partitions_of_key.values())
    # 50 keys hash over 3 partitions: every partition gets some, so the test sees all three.
    assert len({p for parts in partitions_of_key.values() for p in parts}) == 3
    assert assigned == {TopicPartition(topic, p) for p in range(3)}
    assert committed == end_offsets
    assert sum(end_offsets.values()) == MESSAGES


@pytest.mark.integration
def test_configured_topics_are_provisioned_idempotently(kafka: Settings) -> None:
    assert services.kafka_ready(kafka)
    assert services.ensure_topics(kafka) == []  # the fixture already created them all

    admin = _admin(kafka)
    try:
        described = services.topic_partition_counts(admin)
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in kafka.kafka.topics]
        configs = admin.describe_configs(resources)
    finally:
        admin.close()
    for name, topic in kafka.kafka.topics.items():
        assert described[name] == topic.partitions, name
    text = str(configs)
    for topic in kafka.kafka.topics.values():
        assert str(topic.retention_ms) in text
        assert str(topic.max_message_bytes) in text


@pytest.mark.integration
def test_kafka_up_on_a_running_broker_reports_already_running(kafka: Settings) -> None:
    assert services.kafka_up(kafka) is False
    assert services.kafka_ready(kafka)


@pytest.mark.integration
def test_a_consumer_reads_a_backlog_whose_fetch_responses_exceed_one_megabyte(
    kafka: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A backlog comes back in fetch responses over 1 MB; kafka-python's own frame limit
    (1,000,000 bytes) refused them: it dropped the connection, refreshed metadata and
    fetched again (`make chaos` after a fault). Every client takes the larger limit from
    client_options, so the backlog is read without a dropped connection."""
    topic = f"foundation-backlog-{uuid.uuid4().hex[:8]}"
    admin = _admin(kafka)
    services.create_topics(admin, [NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    # 3 MB in 16 KB batches: the broker fills each response to ~1 MiB of whole batches
    payload = b"x" * 1_000
    producer = KafkaProducer(**kafka.kafka.client_options("admin"))
    for i in range(RECORDS := 3_000):
        producer.send(topic, value=i.to_bytes(4, "big") + payload)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        topic,
        **kafka.kafka.client_options("admin"),
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=20_000,
    )
    with caplog.at_level(logging.WARNING, logger="kafka"):
        got = [int.from_bytes(record.value[:4], "big") for record in consumer]
    consumer.close()
    assert got == list(range(RECORDS))
    assert not [r.getMessage() for r in caplog.records if "InvalidReceiveError" in r.getMessage()]
