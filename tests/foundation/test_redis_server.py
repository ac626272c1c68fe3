"""Real redis-server (Debian package) for the redis/cluster profiles."""

from __future__ import annotations

import uuid

import pytest
import redis

from feedrank import services
from feedrank.config import Settings


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis(host=settings.redis.host, port=settings.redis.port, socket_timeout=5)


@pytest.mark.integration
def test_redis_answers_ping_and_survives_down_and_up(redis_server: Settings) -> None:
    key = f"foundation:{uuid.uuid4().hex}"
    client = _client(redis_server)
    assert client.ping()
    client.set(key, "kept")
    client.close()

    services.redis_down(redis_server)
    assert not services.redis_ready(redis_server)
    services.redis_up(redis_server)

    client = _client(redis_server)
    try:
        assert client.ping()
        # redis-server saves its snapshot on SIGTERM and reloads it: data survives a restart.
        assert client.get(key) == b"kept"
        client.delete(key)
    finally:
        client.close()
    assert services.redis_up(redis_server) is False
