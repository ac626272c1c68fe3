"""The fast path: :class:`FeatureHydrator`, one request's model matrix from in-memory views."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from feedrank import feature_spec as spec
from feedrank.config import (
    Settings,
    get_settings,
    redis_client_kwargs,
    redis_serving_options,
)
from feedrank.context import context_features
from feedrank.errors import FeedrankError
from serving.hydration.feast_codec import STREAM_VIEWS, UNKNOWN_ID, EntityKeyCodec, device_code
from serving.hydration.online_readers import (
    OnlineReader,
    RedisReader,
    RedisStreamMirror,
    SqliteReader,
)

if TYPE_CHECKING:
    import feast

log = logging.getLogger("serving.hydration")


# A single-key view whose ids span at most this many times its row count (plus a little) is
# looked up through a dense position table (one int32 per id in the span): a gather instead of
# a binary search per candidate. Sparse ids keep the binary search.
DENSE_SPAN_PER_ROW = 4
DENSE_SPAN_SLACK = 1 << 16


class _ViewCache:
    """A view's online rows decoded once, looked up by key without a Python loop.

    Single-key views: a dense position table over the key span when the ids are dense
    enough (``DENSE_SPAN_PER_ROW``), else one sorted key array searched in binary. Pair views:
    grouped by the first key (a request has one user), each group a sorted array of second
    keys. The matrix's last row is all NaN: the row of every miss.
    """

    def __init__(self, keys: list[tuple], matrix: np.ndarray) -> None:
        width = matrix.shape[1]
        self.matrix = np.vstack([matrix, np.full((1, width), np.nan)])
        self.miss = len(keys)
        self.groups: dict[int | None, tuple[np.ndarray, np.ndarray]] = {}
        self._dense: tuple[int, np.ndarray] | None = None  # (lowest key, row of key - lowest)
        if not keys:
            return  # every lookup misses
        arr = np.array(keys, dtype=np.int64).reshape(len(keys), -1)
        if arr.shape[1] == 1:
            order = np.argsort(arr[:, 0], kind="stable")
            self.groups[None] = (arr[order, 0], order)
            low, high = int(arr[:, 0].min()), int(arr[:, 0].max())
            if high - low < DENSE_SPAN_PER_ROW * len(keys) + DENSE_SPAN_SLACK:
                table = np.full(high - low + 1, self.miss, dtype=np.int32)
                # Reversed, so that for a duplicate key the first row wins, as in the search.
                table[arr[::-1, 0] - low] = np.arange(len(keys) - 1, -1, -1, dtype=np.int32)
                self._dense = (low, table)
        else:
            order = np.lexsort((arr[:, 1], arr[:, 0]))
            firsts = arr[order, 0]
            cuts = np.flatnonzero(np.diff(firsts)) + 1
            for chunk in np.split(order, cuts):
                self.groups[int(arr[chunk[0], 0])] = (arr[chunk, 1], chunk)

    def __len__(self) -> int:
        return self.miss

    def rows(self, keys: np.ndarray, first: int | None = None) -> np.ndarray:
        """Row positions of ``keys`` in :attr:`matrix` (``miss`` for absent keys)."""
        if first is None and self._dense is not None:
            low, table = self._dense
            offset = keys - low
            inside = (offset >= 0) & (offset < len(table))
            return np.where(inside, table[np.where(inside, offset, 0)], self.miss)
        group = self.groups.get(first)
        if group is None or len(group[0]) == 0:
            return np.full(len(keys), self.miss)
        sorted_keys, rows = group
        pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        return np.where(sorted_keys[pos] == keys, rows[pos], self.miss)

    def take(self, keys: np.ndarray, first: int | None = None) -> np.ndarray:
        """Rows of ``keys`` (int64 array; for a pair view, second keys of ``first``)."""
        return self.matrix[self.rows(keys, first)]


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
        self._mirror: RedisStreamMirror | None = None
        if config.online_store.type == "sqlite":
            path = Path(config.online_store.path)
            if not path.is_file():
                raise FeedrankError(
                    f"no online store at {path}: run `feedrank feast-apply` and "
                    "`feedrank materialize` first"
                )
            self._reader: OnlineReader = SqliteReader(str(path), config.project)
        else:
            import redis

            # The same address and password the Feast config was written from; fail fast.
            client = redis.Redis(
                **redis_client_kwargs(self.settings), **redis_serving_options(self.settings)
            )
            self._reader = RedisReader(client, config.project)
            self._mirror = RedisStreamMirror.start(
                self._reader,
                {name: (spec.VIEWS[name], self._codecs[name]) for name in STREAM_VIEWS},
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
            if name in STREAM_VIEWS:
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
        if not isinstance(reader, SqliteReader):
            return None
        version = reader.data_version()
        snapshot = self._stream_cache
        if snapshot is None or version != self._stream_version:
            snapshot = {
                name: _ViewCache(*reader.scan(spec.VIEWS[name], self._codecs[name]))
                for name in STREAM_VIEWS
            }
            self._stream_cache, self._stream_version = snapshot, version
        return snapshot

    @property
    def stream_reads(self) -> str:
        """Where the pushed views are read from now: ``sqlite`` (rescanned on change),
        ``mirror`` (Redis, in memory) or ``live`` (Redis, every request)."""
        if self._mirror is None:
            return "sqlite" if isinstance(self._reader, SqliteReader) else "live"
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
            if name in STREAM_VIEWS and stream_cache is not None:
                values = lookups[view.entity](stream_cache[name])
            elif name in STREAM_VIEWS and mirror is not None:
                values = mirror.take(name, stream_keys[view.entity])
            elif name in STREAM_VIEWS:
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
