"""Feature hydration for the scorer: one request's model matrix from Feast's online store.

Two paths give the same matrix (``len(tweet_ids) × len(model_features())``, float64, NaN for
anything missing):

* :func:`online_features_matrix` — the reference: ``FeatureStore.get_online_features`` with
  the ``ranker_v1`` FeatureService (≈0.4–2.5 s for 1,000 candidates on this machine).
* :class:`FeatureHydrator` — the fast path. It reads the very rows Feast wrote (same tables,
  Redis hashes, entity-key serialization and value protos), and keeps the views that change
  only on materialization (``daily`` and ``event`` kinds) decoded in memory as NumPy matrices,
  reloaded when the registry records a new materialization (or ``apply``). The pushed
  real-time views (``stream`` kind) follow every write: on SQLite they are rescanned whenever
  ``PRAGMA data_version`` says another connection committed (a push or a materialization);
  on Redis they are mirrored in memory and kept current by Redis keyspace notifications
  (:class:`_RedisStreamMirror`: each written key is re-read within milliseconds of the
  write; :meth:`FeatureHydrator.sync` waits until every earlier write is in). Where the
  server refuses to enable notifications, they are read live on every request instead (one
  Lua ``HMGET`` loop, one round trip).
  Request context is computed by :func:`feedrank.context.context_features`, the function the
  on-demand view runs.

Documented defaults: an unknown tweet has author and topic ``-1`` (so its author, user×author
and user×topic features are NaN), any entity absent from a view gives NaN for that view's
features, and online values are served regardless of the view's TTL, as Feast does online.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from feedrank import feature_spec as spec
from feedrank.config import Settings, get_settings
from feedrank.context import context_features
from feedrank.errors import FeedrankError
from feedrank.schemas import DEVICES

if TYPE_CHECKING:
    import feast

log = logging.getLogger(__name__)

UNKNOWN_ID = -1
_STRING, _INT64 = 2, 4  # feast ValueType numbers used by the entity-key serialization
_STREAM = {v.name for v in spec.VIEWS.values() if v.kind == "stream"}


def device_code(device: str) -> int:
    """Index of ``device`` in ``feedrank.schemas.DEVICES``; ``ValueError`` if unknown."""
    try:
        return DEVICES.index(device)
    except ValueError:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}") from None


# ------------------------------------------------------------------ Feast's key encoding


class EntityKeyCodec:
    """Feast's entity-key serialization (version 3) for int64 join keys, precomputed.

    ``serialize_entity_key`` sorts join keys by name and writes: key count, then for each key
    (STRING type, name length, name), then for each value (INT64 type, 8, little-endian q).
    """

    def __init__(self, join_keys: Sequence[str]) -> None:
        self.join_keys = tuple(join_keys)
        order = sorted(range(len(join_keys)), key=lambda i: join_keys[i])
        self._order = order
        head = [struct.pack("<I", len(join_keys))]
        for i in order:
            name = join_keys[i].encode()
            head += [struct.pack("<II", _STRING, len(name)), name]
        self.prefix = b"".join(head)
        self._value_head = struct.pack("<II", _INT64, 8)

    def encode(self, rows: Sequence[Sequence[int]]) -> list[bytes]:
        """Serialized keys of rows given in ``join_keys`` order."""
        prefix, vh = self.prefix, self._value_head
        if len(self._order) == 1:
            return [prefix + vh + int(r[0]).to_bytes(8, "little", signed=True) for r in rows]
        order = self._order
        return [
            prefix + b"".join(vh + int(r[i]).to_bytes(8, "little", signed=True) for i in order)
            for r in rows
        ]

    def decode(self, key: bytes) -> tuple[int, ...] | None:
        """Join-key values (``join_keys`` order) of a serialized key; None if not this entity."""
        n = len(self._order)
        if not key.startswith(self.prefix) or len(key) != len(self.prefix) + 16 * n:
            return None
        pos = len(self.prefix)
        out = [0] * n
        for i in self._order:
            out[i] = int.from_bytes(key[pos + 8 : pos + 16], "little", signed=True)
            pos += 16
        return tuple(out)


def decode_value(blob: bytes | None) -> float:
    """A serialized Feast ``ValueProto`` as float (NaN when null/absent)."""
    if not blob:
        return np.nan
    tag = blob[0]
    if tag == 0x29 and len(blob) == 9:  # double_val (field 5, fixed64)
        return struct.unpack_from("<d", blob, 1)[0]
    if tag == 0x20 and blob[-1] < 0x80 and len(blob) <= 9:  # int64_val (field 4), varint
        result = 0
        for shift, byte in enumerate(blob[1:]):
            result |= (byte & 0x7F) << (7 * shift)
        return float(result)  # < 2**56: non-negative, so no two's complement to undo
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value.FromString(blob)
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return np.nan
    return float(getattr(value, kind))


# Counters repeat the same few serialized values: decode each distinct blob once.
_VALUE_MEMO: dict[bytes | None, float] = {}
_VALUE_MEMO_MAX = 200_000


def _memo_decode(blob: bytes | None) -> float:
    number = decode_value(blob)
    if len(_VALUE_MEMO) < _VALUE_MEMO_MAX:
        _VALUE_MEMO[blob] = number
    return number


# ------------------------------------------------------------------ online-store readers


class _Reader:
    """Reads one view's rows from the online store."""

    def scan(self, view: spec.View, codec: EntityKeyCodec) -> tuple[list[tuple], np.ndarray]:
        """Every entity of ``view`` and its values (rows × features)."""
        raise NotImplementedError

    def read(self, view: spec.View, keys: list[bytes]) -> np.ndarray:
        """Values of ``keys`` (serialized) in ``view``: rows × features, NaN when absent."""
        raise NotImplementedError


class _SqliteReader(_Reader):
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
        memo = _VALUE_MEMO
        for key_bin, feature_name, value in rows:
            j = col.get(feature_name)
            if j is None:
                continue
            vec = found.get(key_bin)
            if vec is None:
                vec = found[key_bin] = [np.nan] * width
            number = memo.get(value)
            if number is None:
                number = _memo_decode(value)
            vec[j] = number
        empty = [np.nan] * width
        return np.array([found.get(k, empty) for k in keys], dtype=np.float64).reshape(
            len(keys), width
        )


class _RedisReader(_Reader):
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
        memo = _VALUE_MEMO
        return np.array(
            [n if (n := memo.get(v)) is not None else _memo_decode(v) for v in flat],
            dtype=np.float64,
        ).reshape(len(keys), len(fields))


class _RedisStreamMirror:
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

    def __init__(self, reader: _RedisReader, views: dict[str, tuple[spec.View, EntityKeyCodec]]):
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
        cls, reader: _RedisReader, views: dict[str, tuple[spec.View, EntityKeyCodec]]
    ) -> _RedisStreamMirror | None:
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
        """Rows of ``keys`` (NaN where absent), like :meth:`_RedisReader.read`."""
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


# ------------------------------------------------------------------ the fast path


class _ViewCache:
    """A view's online rows decoded once, looked up with vectorized binary search.

    Single-key views: one sorted key array. Pair views: grouped by the first key (a request
    has one user), each group a sorted array of second keys. The matrix's last row is all
    NaN: the row of every miss.
    """

    def __init__(self, keys: list[tuple], matrix: np.ndarray) -> None:
        width = matrix.shape[1]
        self.matrix = np.vstack([matrix, np.full((1, width), np.nan)])
        self.miss = len(keys)
        self.groups: dict[int | None, tuple[np.ndarray, np.ndarray]] = {}
        if not keys:
            return  # every lookup misses
        arr = np.array(keys, dtype=np.int64).reshape(len(keys), -1)
        if arr.shape[1] == 1:
            order = np.argsort(arr[:, 0], kind="stable")
            self.groups[None] = (arr[order, 0], order)
        else:
            order = np.lexsort((arr[:, 1], arr[:, 0]))
            firsts = arr[order, 0]
            cuts = np.flatnonzero(np.diff(firsts)) + 1
            for chunk in np.split(order, cuts):
                self.groups[int(arr[chunk[0], 0])] = (arr[chunk, 1], chunk)

    def __len__(self) -> int:
        return self.miss

    def take(self, keys: np.ndarray, first: int | None = None) -> np.ndarray:
        """Rows of ``keys`` (int64 array; for a pair view, second keys of ``first``)."""
        group = self.groups.get(first)
        if group is None or len(group[0]) == 0:
            return self.matrix[np.full(len(keys), self.miss)]
        sorted_keys, rows = group
        pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        idx = np.where(sorted_keys[pos] == keys, rows[pos], self.miss)
        return self.matrix[idx]


class FeatureHydrator:
    """The scorer's feature read path: equal to ``get_online_features(ranker_v1)``, fast.

    Args:
        settings: profile, run folder and Redis address (default: process settings).
        store: an existing ``FeatureStore`` for the same settings (default: built here).
        refresh_interval_s: how often ``hydrate`` checks the registry for a new
            materialization before reloading the cached views.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        store: feast.FeatureStore | None = None,
        *,
        refresh_interval_s: float = 1.0,
    ) -> None:
        from feedrank.featurestore import feature_store

        self.settings = settings or get_settings()
        self.store = store or feature_store(self.settings)
        self.refresh_interval_s = refresh_interval_s
        self.features = spec.model_features()
        self._position = {name: j for j, name in enumerate(self.features)}
        self._model_views = [
            (name, view, [self._position[f] for f in view.feature_names])
            for name, view in spec.VIEWS.items()
            if view.in_model
        ]
        attributes = spec.VIEWS["tweet_attributes"].feature_names
        self._topic_col = attributes.index("tweet_topic")
        self._created_col = attributes.index("tweet_created_ts")
        self._codecs = {
            name: EntityKeyCodec(spec.ENTITIES[view.entity].join_keys)
            for name, view in spec.VIEWS.items()
        }
        config = self.store.config
        self._mirror: _RedisStreamMirror | None = None
        if config.online_store.type == "sqlite":
            path = Path(config.online_store.path)
            if not path.is_file():
                raise FeedrankError(
                    f"no online store at {path}: run `feedrank feast-apply` and "
                    "`feedrank materialize` first"
                )
            self._reader: _Reader = _SqliteReader(str(path), config.project)
        else:
            import redis

            host, port = config.online_store.connection_string.split(",")[0].split(":")
            self._reader = _RedisReader(redis.Redis(host=host, port=int(port)), config.project)
            self._mirror = _RedisStreamMirror.start(
                self._reader, {name: (spec.VIEWS[name], self._codecs[name]) for name in _STREAM}
            )
        self._registry_path = Path(config.registry.path)
        self._lock = threading.Lock()
        self._cache: dict[str, _ViewCache] = {}
        self._stream_cache: dict[str, _ViewCache] | None = None
        self._stream_version = -1
        self._stamp: tuple[int, int] | None = None
        self._checked_at = 0.0
        self.refresh(force=True)

    # -- cache maintenance

    def _registry_stamp(self) -> tuple[int, int]:
        try:
            stat = self._registry_path.stat()
        except FileNotFoundError:
            return (0, 0)
        return (stat.st_mtime_ns, stat.st_size)

    def refresh(self, force: bool = False) -> bool:
        """Reload the cached views if the registry changed (a materialization or an apply).

        Returns:
            True if the views were reloaded.
        """
        stamp = self._registry_stamp()
        self._checked_at = time.monotonic()
        if not force and stamp == self._stamp:
            return False
        started = time.perf_counter()
        cache: dict[str, _ViewCache] = {}
        for name, view in spec.VIEWS.items():
            if name in _STREAM:
                continue
            try:
                keys, matrix = self._reader.scan(view, self._codecs[name])
            except sqlite3.OperationalError as exc:
                raise FeedrankError(
                    f"cannot read {name} from the online store ({exc}): run `feedrank "
                    "feast-apply` for this profile"
                ) from exc
            cache[name] = _ViewCache(keys, matrix)
        with self._lock:
            self._cache, self._stamp = cache, stamp
        log.info(
            "hydrator cache loaded in %.0f ms: %s",
            1e3 * (time.perf_counter() - started),
            {k: len(v) for k, v in cache.items()},
        )
        return True

    def _stream_snapshot(self) -> dict[str, _ViewCache] | None:
        """SQLite: the stream views, rescanned only when another connection has committed
        a write since the last scan (``PRAGMA data_version``); None on Redis (read live)."""
        reader = self._reader
        if not isinstance(reader, _SqliteReader):
            return None
        version = reader.data_version()
        snapshot = self._stream_cache
        if snapshot is None or version != self._stream_version:
            snapshot = {
                name: _ViewCache(*reader.scan(spec.VIEWS[name], self._codecs[name]))
                for name in _STREAM
            }
            self._stream_cache, self._stream_version = snapshot, version
        return snapshot

    @property
    def stream_reads(self) -> str:
        """Where the pushed views are read from now: ``sqlite`` (rescanned on change),
        ``mirror`` (Redis, in memory) or ``live`` (Redis, every request)."""
        if self._mirror is None:
            return "sqlite" if isinstance(self._reader, _SqliteReader) else "live"
        return "mirror" if self._mirror.ready.is_set() else "live"

    def sync(self, timeout_s: float = 10.0) -> None:
        """Wait until every online-store write acknowledged before this call is visible to
        :meth:`hydrate` (only the Redis mirror lags writes; SQLite is read when it changed)."""
        if self._mirror is not None:
            self._mirror.sync(timeout_s)

    def close(self) -> None:
        """Stop the Redis mirror's thread (nothing to do on SQLite)."""
        if self._mirror is not None:
            self._mirror.close()

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._checked_at >= self.refresh_interval_s:
            self.refresh()

    # -- reads

    def author_ids(self, tweet_ids: Sequence[int]) -> np.ndarray:
        """Each tweet's author (int64), ``-1`` for tweets the store does not know."""
        self._maybe_refresh()
        ids = np.asarray(tweet_ids, dtype=np.int64).reshape(-1)
        return _ids(self._cache["tweet_authors"].take(ids)[:, 0])

    def hydrate(
        self, user_id: int, tweet_ids: Sequence[int], request_ts: float, device: str
    ) -> np.ndarray:
        """The model matrix of one request: rows = ``tweet_ids``, columns = model_features().

        Args:
            user_id: the requesting user.
            tweet_ids: candidate tweets (duplicates allowed).
            request_ts: request time, seconds since the epoch (UTC).
            device: one of ``feedrank.schemas.DEVICES``.

        Returns:
            float64 array, NaN where a value is missing.
        """
        code = device_code(device)
        self._maybe_refresh()
        cache = self._cache
        user = int(user_id)
        tweets = np.asarray(tweet_ids, dtype=np.int64).reshape(-1)
        n = len(tweets)
        out = np.full((n, len(self.features)), np.nan)
        if n == 0:
            return out
        tweet_attr = cache["tweet_attributes"].take(tweets)
        topics = _ids(tweet_attr[:, self._topic_col])
        authors = _ids(cache["tweet_authors"].take(tweets)[:, 0])
        user_rows = np.array([user], dtype=np.int64)
        lookups: dict[str, Callable[[_ViewCache], np.ndarray]] = {
            "user": lambda c: c.take(user_rows),
            "author": lambda c: c.take(authors),
            "tweet": lambda c: c.take(tweets),
            "user_author": lambda c: c.take(authors, first=user),
            "user_topic": lambda c: c.take(topics, first=user),
        }
        stream_cache = self._stream_snapshot()
        mirror = self._mirror if self._mirror is not None and self._mirror.ready.is_set() else None
        stream_keys: dict[str, list[tuple[int, ...]]] = {}
        if stream_cache is None:
            stream_keys = {"user": [(user,)], "tweet": [(t,) for t in tweets.tolist()]}
        for name, view, cols in self._model_views:
            if name in _STREAM and stream_cache is not None:
                values = lookups[view.entity](stream_cache[name])
            elif name in _STREAM and mirror is not None:
                values = mirror.take(name, stream_keys[view.entity])
            elif name in _STREAM:
                keys = self._codecs[name].encode(stream_keys[view.entity])
                values = self._reader.read(view, keys)
            elif name == "tweet_attributes":
                values = tweet_attr
            else:
                values = lookups[view.entity](cache[name])
            out[:, cols] = values  # a user view's single row broadcasts over candidates
        peak = out[0, self._position["user_active_hour_peak"]]
        context = context_features(
            np.full(n, float(request_ts)),
            np.full(n, float(code)),
            tweet_attr[:, self._created_col],
            np.full(n, peak),
        )
        for feature in spec.CONTEXT_FEATURES:
            out[:, self._position[feature.name]] = context[feature.name]
        return out


def _ids(column: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(column), UNKNOWN_ID, column).astype(np.int64)


# ------------------------------------------------------------------ the reference path


def online_author_ids(
    store: feast.FeatureStore, tweet_ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Authors and topics of tweets through ``get_online_features`` (``-1`` when unknown)."""
    response = store.get_online_features(
        features=["tweet_authors:tweet_author_id", "tweet_attributes:tweet_topic"],
        entity_rows=[{"tweet_id": int(t)} for t in tweet_ids],
    ).to_dict()

    def ids(values: list) -> np.ndarray:
        return np.array([UNKNOWN_ID if v is None else int(v) for v in values], dtype=np.int64)

    return ids(response["tweet_author_id"]), ids(response["tweet_topic"])


def online_features_matrix(
    store: feast.FeatureStore,
    user_id: int,
    tweet_ids: Sequence[int],
    request_ts: float,
    device: str,
) -> np.ndarray:
    """The model matrix through ``get_online_features(features=ranker_v1)`` (reference path)."""
    code = device_code(device)
    if len(tweet_ids) == 0:
        return np.full((0, len(spec.model_features())), np.nan)
    authors, topics = online_author_ids(store, tweet_ids)
    rows = [
        {
            "user_id": int(user_id),
            "tweet_id": int(t),
            "author_id": int(a),
            "topic": int(c),
            "request_ts": float(request_ts),
            "device_code": code,
        }
        for t, a, c in zip(tweet_ids, authors, topics, strict=True)
    ]
    service = store.get_feature_service(spec.FEATURE_SERVICE)
    response = store.get_online_features(features=service, entity_rows=rows).to_dict()
    names = spec.model_features()
    missing = [name for name in names if name not in response]
    if missing:
        raise ValueError(f"{missing[0]} missing from the {spec.FEATURE_SERVICE} response")
    return np.array(
        [[np.nan if v is None else float(v) for v in response[name]] for name in names],
        dtype=np.float64,
    ).T
