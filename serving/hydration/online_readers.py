"""Readers of the rows Feast wrote: SQLite tables, Redis hashes, and the Redis mirror of the
pushed real-time views kept current by keyspace notifications."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from feedrank import feature_spec as spec
from feedrank.errors import FeedrankError
from serving.hydration.feast_codec import VALUE_MEMO, EntityKeyCodec, decode_value, memo_decode

log = logging.getLogger("serving.hydration")


class OnlineReader:
    """Reads one view's rows from the online store."""

    def scan(self, view: spec.View, codec: EntityKeyCodec) -> tuple[list[tuple], np.ndarray]:
        """Every entity of ``view`` and its values (rows × features)."""
        raise NotImplementedError

    def read(self, view: spec.View, keys: list[bytes]) -> np.ndarray:
        """Values of ``keys`` (serialized) in ``view``: rows × features, NaN when absent."""
        raise NotImplementedError


class SqliteReader(OnlineReader):
    def __init__(self, path: str, project: str) -> None:
        self.project = project
        self.conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=10.0, check_same_thread=False
        )

    def data_version(self) -> int:
        """Changes whenever another connection commits to the database file."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def _table(self, view: spec.View) -> str:
        return '"' + f"{self.project}_{view.name}".replace('"', '""') + '"'

    def scan(self, view: spec.View, codec: EntityKeyCodec) -> tuple[list[tuple], np.ndarray]:
        col = {name: j for j, name in enumerate(view.feature_names)}
        rows = self.conn.execute(
            f"SELECT entity_key, feature_name, value FROM {self._table(view)}"
        ).fetchall()
        index: dict[bytes, int] = {}
        keys: list[tuple] = []
        cells: list[tuple[int, int, float]] = []
        for key_bin, feature_name, value in rows:
            j = col.get(feature_name)
            if j is None:
                continue
            i = index.get(key_bin)
            if i is None:
                decoded = codec.decode(key_bin)
                if decoded is None:
                    continue
                i = index[key_bin] = len(keys)
                keys.append(decoded)
            cells.append((i, j, decode_value(value)))
        matrix = np.full((len(keys), len(col)), np.nan)
        if cells:
            ii, jj, vv = zip(*cells, strict=True)
            matrix[np.array(ii), np.array(jj)] = np.array(vv, dtype=np.float64)
        return keys, matrix

    def read(self, view: spec.View, keys: list[bytes]) -> np.ndarray:
        col = {name: j for j, name in enumerate(view.feature_names)}
        width = len(col)
        unique = list(dict.fromkeys(keys))
        rows = self.conn.execute(
            f"SELECT entity_key, feature_name, value FROM {self._table(view)} "
            f"WHERE entity_key IN ({','.join('?' * len(unique))})",
            unique,
        ).fetchall()
        found: dict[bytes, list[float]] = {}
        memo = VALUE_MEMO
        for key_bin, feature_name, value in rows:
            j = col.get(feature_name)
            if j is None:
                continue
            vec = found.get(key_bin)
            if vec is None:
                vec = found[key_bin] = [np.nan] * width
            number = memo.get(value)
            if number is None:
                number = memo_decode(value)
            vec[j] = number
        empty = [np.nan] * width
        return np.array([found.get(k, empty) for k in keys], dtype=np.float64).reshape(
            len(keys), width
        )


class RedisReader(OnlineReader):
    # HMGET of the same fields on every key, flattened (single-node Redis: keys may span
    # slots, so not for Redis Cluster).
    _MULTI_HMGET = """
local out = {}
local n = 0
for _, key in ipairs(KEYS) do
  local values = redis.call('HMGET', key, unpack(ARGV))
  for j = 1, #ARGV do
    n = n + 1
    out[n] = values[j]
  end
end
return out
"""

    def __init__(self, client: Any, project: str) -> None:
        self.client = client
        self.suffix = project.encode()
        self._multi_hmget = client.register_script(self._MULTI_HMGET)

    @staticmethod
    def _fields(view: spec.View) -> list[bytes]:
        from feast.infra.online_stores.helpers import _mmh3

        return [_mmh3(f"{view.name}:{name}") for name in view.feature_names]

    def _hmget(self, keys: list[bytes], fields: list[bytes]) -> list[list[bytes | None]]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, fields)
        return pipe.execute()

    def rows(self, view: spec.View, redis_keys: list[bytes]) -> list[list[float] | None]:
        """Decoded values of ``view`` for each Redis key; None where the key has no row of it
        (no ``_ts:<view>`` field)."""
        fields = [*self._fields(view), f"_ts:{view.name}".encode()]
        out: list[list[float] | None] = []
        for start in range(0, len(redis_keys), 5000):
            chunk = redis_keys[start : start + 5000]
            for values in self._hmget(chunk, fields):
                out.append(None if values[-1] is None else [decode_value(v) for v in values[:-1]])
        return out

    def scan(self, view: spec.View, codec: EntityKeyCodec) -> tuple[list[tuple], np.ndarray]:
        redis_keys = [
            k
            for k in self.client.scan_iter(match=codec.prefix + b"*", count=5000)
            if k.endswith(self.suffix)
        ]
        keys: list[tuple] = []
        rows: list[list[float]] = []
        for key, row in zip(redis_keys, self.rows(view, redis_keys), strict=True):
            decoded = codec.decode(key[: -len(self.suffix)])
            if decoded is None or row is None:
                continue
            keys.append(decoded)
            rows.append(row)
        width = len(view.feature_names)
        return keys, np.array(rows, dtype=np.float64).reshape(len(rows), width)

    def read(self, view: spec.View, keys: list[bytes]) -> np.ndarray:
        fields = self._fields(view)
        # One round trip and one flat reply instead of a pipeline of len(keys) HMGETs.
        flat = self._multi_hmget(keys=[k + self.suffix for k in keys], args=fields)
        memo = VALUE_MEMO
        return np.array(
            [n if (n := memo.get(v)) is not None else memo_decode(v) for v in flat],
            dtype=np.float64,
        ).reshape(len(keys), len(fields))


class RedisStreamMirror:
    """The stream views of a Redis online store, held in memory and kept current.

    A background thread subscribes to Redis keyspace notifications for the database
    (``notify-keyspace-events`` gets the ``K``, hash and generic classes added when missing),
    then scans the views, then re-reads every key a notification names: Feast's writes
    (``FeatureStore.push``, materialization) are ``HSET`` / ``EXPIRE`` / ``DEL`` on the
    entity's hash, so any write by any process reaches the mirror. Subscribing before the
    scan means no write falls between the two. If the subscription breaks, :attr:`ready` is
    cleared (the hydrator reads live meanwhile) and the thread subscribes and scans again.
    """

    EVENTS = "Khgxe"  # keyspace channel; hash, generic (del/expire), expired, evicted

    def __init__(self, reader: RedisReader, views: dict[str, tuple[spec.View, EntityKeyCodec]]):
        self.reader = reader
        self.views = views
        self.rows: dict[str, dict[tuple[int, ...], list[float]]] = {name: {} for name in views}
        self.empty = {name: [np.nan] * len(v.feature_names) for name, (v, _) in views.items()}
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._tokens: dict[bytes, threading.Event] = {}
        self._sync_channel = f"feedrank:hydrator-sync:{uuid.uuid4().hex}".encode()
        db = int(reader.client.connection_pool.connection_kwargs.get("db", 0))
        self._pattern = f"__keyspace@{db}__:*".encode()
        self._thread = threading.Thread(target=self._run, name="redis-stream-mirror", daemon=True)

    @classmethod
    def start(
        cls, reader: RedisReader, views: dict[str, tuple[spec.View, EntityKeyCodec]]
    ) -> RedisStreamMirror | None:
        """A running mirror, or None when the server will not send keyspace notifications."""
        import redis

        client = reader.client
        try:
            current = _text(next(iter(client.config_get("notify-keyspace-events").values()), ""))
            have = set(current) | (set("g$lshzxet") if "A" in current else set())
            if not set(cls.EVENTS) <= have:
                client.config_set("notify-keyspace-events", "".join(set(current) | set(cls.EVENTS)))
        except redis.ResponseError as exc:
            log.warning("keyspace notifications unavailable (%s): stream views read live", exc)
            return None
        mirror = cls(reader, views)
        mirror._thread.start()
        mirror.ready.wait(30.0)  # until then (or after a failure) the hydrator reads live
        return mirror

    def take(self, name: str, keys: Sequence[tuple[int, ...]]) -> np.ndarray:
        """Rows of ``keys`` (NaN where absent), like :meth:`RedisReader.read`."""
        rows, empty = self.rows[name], self.empty[name]
        return np.array([rows.get(k, empty) for k in keys], dtype=np.float64).reshape(
            len(keys), len(empty)
        )

    def sync(self, timeout_s: float = 10.0) -> None:
        """Return once every write acknowledged before this call is in the mirror.

        Publishes a marker on the mirror's own channel and waits for it: Redis delivers one
        connection's messages in order, so the notifications of earlier writes come first. A
        marker lost with a broken subscription is sent again once the mirror is back.
        """
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0 and self.ready.wait(left):
            token, seen = uuid.uuid4().hex.encode(), threading.Event()
            self._tokens[token] = seen
            received = self.reader.client.publish(self._sync_channel, token)
            if received and seen.wait(min(1.0, max(deadline - time.monotonic(), 0.0))):
                return
            self._tokens.pop(token, None)
            time.sleep(0.05)
        raise FeedrankError(f"the Redis stream mirror did not catch up in {timeout_s:.0f} s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self.reader.client.pubsub()
            try:
                pubsub.psubscribe(self._pattern)
                pubsub.subscribe(self._sync_channel)
                confirmed = 0
                while confirmed < 2:  # writes before this are in the scan below
                    message = pubsub.get_message(timeout=5.0)
                    if message is None:
                        raise FeedrankError("no subscription confirmation from Redis")
                    confirmed += message["type"] in ("subscribe", "psubscribe")
                for name, (view, codec) in self.views.items():
                    keys, matrix = self.reader.scan(view, codec)
                    self.rows[name] = dict(zip(keys, matrix.tolist(), strict=True))
                self.ready.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    batch = []
                    while message is not None and len(batch) < 20_000:
                        batch.append(message)
                        message = pubsub.get_message(timeout=0.0)
                    if message is not None:
                        batch.append(message)
                    if any(m["type"] in ("subscribe", "psubscribe") for m in batch):
                        # redis-py resubscribed after a dropped connection by itself: writes
                        # in the gap sent no notification here, so scan again.
                        raise FeedrankError("the keyspace subscription was re-established")
                    if batch:
                        self._apply(batch)
            except Exception as exc:  # a broken connection: read live, then start over
                self.ready.clear()
                if not self._stop.is_set():
                    log.warning("Redis stream mirror restarts after: %s", exc)
                    self._stop.wait(1.0)
            finally:
                pubsub.close()

    def _apply(self, batch: list[dict[str, Any]]) -> None:
        offset, suffix = len(self._pattern) - 1, self.reader.suffix
        written: set[bytes] = set()
        tokens = []
        for message in batch:
            if message["type"] == "pmessage":
                key = message["channel"][offset:]
                if key.endswith(suffix):
                    written.add(key)
            elif message["type"] == "message":
                tokens.append(message["data"])
        for name, (view, codec) in self.views.items():
            mine = [(k, d) for k in written if (d := codec.decode(k[: -len(suffix)])) is not None]
            if not mine:
                continue
            rows = self.rows[name]
            fresh = self.reader.rows(view, [k for k, _ in mine])
            for (_, decoded), row in zip(mine, fresh, strict=True):
                if row is None:
                    rows.pop(decoded, None)
                else:
                    rows[decoded] = row
        for token in tokens:
            seen = self._tokens.pop(token, None)
            if seen is not None:
                seen.set()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
