"""Real redis-server (Debian package) for the redis/cluster profiles."""

from __future__ import annotations

import uuid

import pytest
import redis

from feedrank import services
from feedrank.config import Settings, redis_client_kwargs, redis_password_file
from feedrank.services.process import cmdline, owned_pid
from feedrank.services.redis_server import redis_dir


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis(**redis_client_kwargs(settings), socket_timeout=5)


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


@pytest.mark.integration
def test_redis_refuses_clients_without_the_password(redis_server: Settings) -> None:
    """Every redis-server feedrank starts requires AUTH; the password lives in a 0600 file
    (or FEEDRANK_REDIS__PASSWORD), never on the command line or in feature_store.yaml."""
    from feedrank.featurestore import write_feature_store_yaml

    address = {"host": redis_server.redis.host, "port": redis_server.redis.port}
    anonymous = redis.Redis(**address, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("foundation:anonymous", "x")
    anonymous.close()
    wrong = redis.Redis(**address, password="not-the-password", socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    wrong.close()

    password = redis_client_kwargs(redis_server)["password"]
    path = redis_password_file(redis_server)
    assert password and path.stat().st_mode & 0o777 == 0o600
    pid = owned_pid(redis_server, "redis", str(redis_dir(redis_server)))
    assert pid is not None and password not in cmdline(pid)
    on_redis = redis_server.model_copy(
        update={"feast": redis_server.feast.model_copy(update={"online_store": "redis"})}
    )
    written = write_feature_store_yaml(on_redis).read_text()
    assert password not in written and "${FEEDRANK_REDIS__PASSWORD}" in written
