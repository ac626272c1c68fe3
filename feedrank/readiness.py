"""Is a service answering? The probes clients run before connecting, and service control
runs after starting one (below service control, so jobs and the simulator may use them)."""

from __future__ import annotations

import logging
import time

from feedrank.config import Settings, get_settings, redis_client_kwargs

log = logging.getLogger("feedrank.services")


class _LoginRefusals(logging.Handler):
    """Notices kafka-python's report of a refused SASL login, which it logs and then hides
    behind a generic connection error (a version-probe failure, no broker available)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.refused = False

    def emit(self, record: logging.LogRecord) -> None:
        self.refused |= "SaslAuthenticationFailed" in record.getMessage()


def _kafka_answers(settings: Settings, principal: str, remaining_ms: int) -> bool:
    """One metadata request as ``principal``: True if the cluster answered (every broker
    registered), False if it did not.

    Raises:
        FeedrankError: the brokers refused ``principal``'s SCRAM login.
    """
    from kafka import KafkaAdminClient

    from feedrank.errors import FeedrankError

    conn_logger = logging.getLogger("kafka.conn")
    refusals = _LoginRefusals()
    saved = conn_logger.level, conn_logger.propagate
    conn_logger.setLevel(logging.ERROR)
    conn_logger.propagate = False  # refused connections are expected while waiting
    conn_logger.addHandler(refusals)
    try:
        admin = KafkaAdminClient(
            **settings.kafka.client_options(principal),
            client_id="feedrank-ready",
            api_version_auto_timeout_ms=max(min(remaining_ms, 3000), 1000),
            request_timeout_ms=5000,
        )
        try:
            admin.list_topics()
            # A replicated cluster is ready when every broker has registered.
            return settings.kafka.brokers == 1 or (
                len(admin.describe_cluster()["brokers"]) >= settings.kafka.brokers
            )
        finally:
            admin.close()
    except Exception as exc:  # any failure but a refused login means "not ready yet"
        if refusals.refused:
            raise FeedrankError(
                f"Kafka refused the SCRAM login of "
                f"{settings.kafka.username_prefix + principal!r}: the password in "
                f"{settings.kafka.password_file(principal)} is not the one the brokers hold"
            ) from exc
        log.debug("kafka not ready: %s", exc)
        return False
    finally:
        conn_logger.removeHandler(refusals)
        conn_logger.setLevel(saved[0])
        conn_logger.propagate = saved[1]


def kafka_ready(
    settings: Settings | None = None, timeout_s: float = 0.0, principal: str = "admin"
) -> bool:
    """True once a kafka-python metadata request to the configured broker succeeds.

    Args:
        settings: resolved settings (``kafka.bootstrap_servers``).
        timeout_s: keep retrying this long; 0 means a single attempt.
        principal: who asks (the login used under ``kafka.security: scram``).

    Raises:
        FeedrankError: the brokers refused ``principal``'s SCRAM login (no point waiting).
    """
    settings = settings or get_settings()
    deadline = time.monotonic() + timeout_s
    # kafka-python logs every refused connection at ERROR; while waiting that is expected.
    kafka_logger = logging.getLogger("kafka")
    level = kafka_logger.level
    kafka_logger.setLevel(logging.CRITICAL)
    try:
        while True:
            remaining_ms = max(int((deadline - time.monotonic()) * 1000), 0)
            if _kafka_answers(settings, principal, remaining_ms):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)
    finally:
        kafka_logger.setLevel(level)


def check_kafka_login(settings: Settings, principal: str) -> None:
    """Under ``kafka.security: scram``, fail at once with one line when the brokers refuse
    ``principal``'s login (kafka-python would report a misleading version error later);
    a broker that does not answer yet is left to the client's own waiting.

    Raises:
        FeedrankError: the login was refused.
    """
    if settings.kafka.security == "scram":
        kafka_ready(settings, principal=principal)


def kafka_live_brokers(settings: Settings | None = None) -> set[int] | None:
    """Node ids of the brokers registered with the cluster now (a broker killed drops out after
    ``broker.session.timeout.ms``), or ``None`` when no broker answers."""
    from kafka import KafkaAdminClient

    settings = settings or get_settings()
    kafka_logger = logging.getLogger("kafka")
    level = kafka_logger.level
    kafka_logger.setLevel(logging.CRITICAL)
    try:
        admin = KafkaAdminClient(
            **settings.kafka.client_options("admin"),
            client_id="feedrank-ready",
            api_version_auto_timeout_ms=2000,
            request_timeout_ms=5000,
        )
        try:
            return {int(b["node_id"]) for b in admin.describe_cluster()["brokers"]}
        finally:
            admin.close()
    except Exception as exc:  # any failure means "none answers"
        log.debug("kafka not answering: %s", exc)
        return None
    finally:
        kafka_logger.setLevel(level)


def redis_ready(settings: Settings | None = None, timeout_s: float = 0.0) -> bool:
    """True once the configured redis-server answers PING."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    settings = settings or get_settings()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # One attempt per round: redis-py's default retries with backoff would make a
            # stopped server cost seconds (``feedrank.services status`` waited 5 s on it).
            client = redis.Redis(
                **redis_client_kwargs(settings), socket_timeout=2, retry=Retry(NoBackoff(), 0)
            )
            try:
                if client.ping():
                    return True
            finally:
                client.close()
        except redis.RedisError as exc:
            log.debug("redis not ready: %s", exc)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
