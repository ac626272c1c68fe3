"""``kafka.security: scram``: a real KRaft broker that requires SASL/SCRAM-SHA-512 and authorizes
every request against feedrank.config.kafka_access, and the default path left as it was.

The secured broker runs from its own run folder on ports 300 above the session's
(tests/conftest.py; the cluster test uses 200), so the session's broker is never touched.
"""

from __future__ import annotations

import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from feedrank import services
from feedrank.config import (
    KAFKA_PRINCIPALS,
    RECEIVE_MESSAGE_MAX_BYTES,
    Settings,
    Topics,
    get_settings,
    kafka_access,
)
from feedrank.errors import ConfigError, FeedrankError
from feedrank.readiness import check_kafka_login, kafka_ready
from feedrank.services.kafka_security import check_users, listener_values

PORT_OFFSET = 300


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    base = get_settings().kafka
    settings = Settings(
        paths={"home": tmp_path_factory.mktemp("secure") / "run"},
        kafka={
            "port": base.port + PORT_OFFSET,
            "controller_port": base.controller_port + PORT_OFFSET,
            "security": "scram",
        },
    )
    services.kafka_up(settings)
    try:
        yield settings
    finally:
        services.kafka_down(settings)


def _producer(settings: Settings, principal: str, **overrides: object) -> KafkaProducer:
    options = settings.kafka.client_options(principal) | {"max_block_ms": 5000} | overrides
    return KafkaProducer(**options, **settings.kafka.producer_options())


def _read(settings: Settings, principal: str, topic: str, want: set[bytes]) -> list[bytes]:
    """Records of ``topic`` partition 0 as ``principal`` (no group), until ``want`` is read
    or 10 s have passed."""
    consumer = KafkaConsumer(**settings.kafka.client_options(principal), group_id=None)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while not want <= set(got) and time.monotonic() < deadline:
            got += [r.value for rs in consumer.poll(timeout_ms=500).values() for r in rs]
        return got
    finally:
        consumer.close()


def _visible(settings: Settings, principal: str) -> set[str]:
    """The topics whose metadata the brokers show ``principal``."""
    consumer = KafkaConsumer(**settings.kafka.client_options(principal), group_id=None)
    try:
        return {t for t in settings.kafka.topics if consumer.partitions_for_topic(t)}
    finally:
        consumer.close()


pytestmark = pytest.mark.integration


def test_an_unauthenticated_client_is_refused(secured: Settings) -> None:
    plain = {"bootstrap_servers": secured.kafka.bootstrap_servers}
    with pytest.raises(KafkaError):
        KafkaAdminClient(**plain, request_timeout_ms=5000, api_version_auto_timeout_ms=3000)
    with pytest.raises(KafkaError):
        KafkaProducer(**plain, max_block_ms=3000).send(Topics.FEED_REQUESTS, b"anonymous").get(5)
    unsecured = secured.model_copy(
        update={"kafka": secured.kafka.model_copy(update={"security": "none"})}
    )
    assert not kafka_ready(unsecured)
    assert kafka_ready(secured)


def _end_offset(settings: Settings, topic: str) -> int:
    consumer = KafkaConsumer(**settings.kafka.client_options("admin"), group_id=None)
    try:
        tp = TopicPartition(topic, 0)
        return consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()


def test_a_wrong_password_is_refused(secured: Settings, tmp_path: Path) -> None:
    before = _end_offset(secured, Topics.RANKED_FEEDS)
    forger = _producer(secured, "serve", sasl_plain_password="not-the-password", max_block_ms=3000)
    with pytest.raises(KafkaError):
        forger.send(Topics.RANKED_FEEDS, b"forged", partition=0).get(5)
    forger.close(timeout=1)
    log = (secured.paths.logs / "kafka.log").read_text()
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in log
    assert _end_offset(secured, Topics.RANKED_FEEDS) == before
    # What `feedrank serve` checks first: one line naming the password file, not the password.
    wrong = tmp_path / "secrets"
    wrong.mkdir()
    (wrong / "serve.password").write_text("not-the-password\n")
    forged = secured.model_copy(
        update={"kafka": secured.kafka.model_copy(update={"password_dir": wrong})}
    )
    with pytest.raises(FeedrankError, match="refused the SCRAM login of 'serve'") as refused:
        check_kafka_login(forged, "serve")
    assert str(wrong / "serve.password") in str(refused.value)
    assert "not-the-password" not in str(refused.value)
    check_kafka_login(secured, "serve")  # the right one passes


def test_every_principal_writes_and_reads_its_topics_and_nothing_else(secured: Settings) -> None:
    table = kafka_access(secured.serving.group_id)
    tag = uuid.uuid4().hex.encode()
    for principal, access in table.items():
        producer = _producer(secured, principal)
        try:
            for topic in access.write:
                producer.send(topic, tag + principal.encode(), partition=0).get(10)
            forbidden = next(t for t in secured.kafka.topics if t not in access.write)
            with pytest.raises(TopicAuthorizationFailedError):
                producer.send(forbidden, tag, partition=0).get(10)
        finally:
            producer.close()
    for principal, access in table.items():
        for topic in access.read:
            want = {tag + p.encode() for p, a in table.items() if topic in a.write}
            assert want <= set(_read(secured, principal, topic, want)), (principal, topic)
        # A topic it may only write: fetching from it is refused.
        for topic in set(access.write) - set(access.read):
            with pytest.raises(TopicAuthorizationFailedError):
                _read(secured, principal, topic, {b"never"})
        # A topic it has no right on: the brokers do not even show it.
        assert _visible(secured, principal) == set(access.read) | set(access.write), principal
    assert _visible(secured, "admin") == set(secured.kafka.topics)


def test_serve_consumes_in_its_group_only(secured: Settings) -> None:
    simulator = _producer(secured, "simulator")
    simulator.send(Topics.FEED_REQUESTS, b"a request").get(10)
    simulator.close()

    def consume(group: str) -> list[bytes]:
        consumer = KafkaConsumer(
            Topics.FEED_REQUESTS,
            **secured.kafka.client_options("serve"),
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        try:
            got: list[bytes] = []
            for _ in range(40):
                got += [r.value for rs in consumer.poll(timeout_ms=500).values() for r in rs]
                if b"a request" in got:
                    consumer.commit()
                    return got
            return got
        finally:
            consumer.close(autocommit=False)

    assert b"a request" in consume(secured.serving.group_id)
    with pytest.raises(GroupAuthorizationFailedError):
        consume(f"not-{secured.serving.group_id}")


def test_the_brokers_acls_are_exactly_the_table_even_after_a_hand_made_one(
    secured: Settings,
) -> None:
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourcePatternFilter,
        ResourceType,
    )

    admin = KafkaAdminClient(**secured.kafka.client_options("admin"))
    try:
        stray = ResourcePattern(ResourceType.TOPIC, Topics.TWEETS, ACLResourcePatternType.LITERAL)
        admin.create_acls(
            [ACL("User:serve", "*", ACLOperation.WRITE, ACLPermissionType.ALLOW, stray)]
        )
        services.kafka_up(secured)  # running already: provisions topics and ACLs again
        every = ACLFilter(
            None,
            "*",
            ACLOperation.ANY,
            ACLPermissionType.ANY,
            ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
        )
        acls, error = admin.describe_acls(every)
        assert error.errno == 0
    finally:
        admin.close()
    have = {
        (a.principal, a.resource_pattern.resource_type.name.lower(),
         a.resource_pattern.resource_name, a.operation.name.capitalize())
        for a in acls
    }  # fmt: skip
    table = kafka_access(secured.serving.group_id)
    assert have == {(f"User:{p}", *b) for p, a in table.items() for b in a.bindings()}


def test_secrets_are_owner_only_and_never_logged(secured: Settings) -> None:
    config = secured.paths.home / "kafka" / "server.properties"
    for path in [config, *(secured.kafka.password_file(p) for p in KAFKA_PRINCIPALS)]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    passwords = [secured.kafka.password(p) for p in KAFKA_PRINCIPALS]
    assert not (secured.paths.home / "kafka" / "format.args").exists()
    for log in secured.paths.logs.iterdir():
        text = log.read_text(errors="replace")
        assert not any(p in text for p in passwords), log


@pytest.mark.unit
def test_without_security_clients_and_broker_are_as_before(tmp_path: Path) -> None:
    settings = Settings(paths={"home": tmp_path})
    assert settings.kafka.security == "none"
    assert settings.kafka.client_options("serve") == {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "reconnect_backoff_max_ms": settings.kafka.reconnect_backoff_max_ms,
        "receive_message_max_bytes": RECEIVE_MESSAGE_MAX_BYTES,
    }
    assert settings.kafka.spark_options("land") == {
        "kafka.bootstrap.servers": settings.kafka.bootstrap_servers
    }
    lines = listener_values(settings)
    assert lines["client_listener"] == "PLAINTEXT"
    assert "authorizer" not in lines["security"]
    assert not (tmp_path / "secrets").exists()


@pytest.mark.unit
def test_bad_principals_and_missing_secrets_are_one_line_errors(tmp_path: Path) -> None:
    settings = Settings(paths={"home": tmp_path}, kafka={"security": "scram"})
    with pytest.raises(ConfigError, match="unknown Kafka principal 'serving'"):
        settings.kafka.client_options("serving")
    with pytest.raises(ConfigError, match=r"serve\.password: cannot read the Kafka password"):
        settings.kafka.client_options("serve")
    (tmp_path / "kafka").mkdir()
    with pytest.raises(FeedrankError, match="formatted without SCRAM users for broker, admin"):
        check_users(settings, tmp_path / "kafka")


@pytest.mark.unit
def test_the_secure_profile_is_redis_with_scram(monkeypatch: pytest.MonkeyPatch) -> None:
    from feedrank.services.status import profile_services

    monkeypatch.setenv("FEEDRANK_PROFILE", "secure")
    settings = Settings()
    assert settings.kafka.security == "scram"
    assert settings.feast.online_store == "redis"
    assert profile_services(settings) == ("kafka", "redis")
