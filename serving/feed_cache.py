"""The ranked-feed cache: recently served feeds with a TTL, in SQLite or Redis.

It does two jobs for the scorer:

* **Idempotency.** A feed request delivered again (at-least-once delivery after a crash or a
  rebalance) whose feed is still cached is answered with the cached feed, byte for byte.
* **Seen dedupe.** The tweets a user was served in the last ``feed_cache_ttl_s`` are not
  served to that user again.

SQLite (the ``local`` profile) lives under the run folder in WAL mode so several
``feedrank serve`` processes can share it; Redis is used where the profile runs Redis (the
Feast online store is Redis there too).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from feedrank.config import Settings, redis_client_kwargs, redis_serving_options
from feedrank.schemas import RankedFeed
from serving import metrics

log = logging.getLogger("feedrank.serving")

_KEY_PREFIX = "feedrank:serving"


class FeedCache(Protocol):
    """What the scorer needs from a feed cache."""

    def get(self, request_id: str) -> bytes | None:
        """The encoded RankedFeed answered for ``request_id``, if still cached."""

    def seen(self, user_id: int) -> set[int]:
        """Tweet ids served to ``user_id`` within the TTL."""

    def put_many(self, feeds: Iterable[tuple[RankedFeed, bytes]]) -> None:
        """Cache answered feeds (the feed and its encoded bytes)."""

    def close(self) -> None:
        """Release connections."""


class SqliteFeedCache:
    """Feed cache in one SQLite file (shared by the processes of one machine)."""

    def __init__(self, path: Path, ttl_s: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.ttl_s = ttl_s
        # One connection per thread: sqlite3 connections must not cross threads.
        self._local = threading.local()
        self._last_purge_s = 0.0
        conn = self._conn()
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS feeds (
                request_id TEXT PRIMARY KEY,
                user_id INTEGER NOT NULL,
                expires_at REAL NOT NULL,
                tweet_ids TEXT NOT NULL,
                feed BLOB NOT NULL
            );
            CREATE INDEX IF NOT EXISTS feeds_user ON feeds (user_id, expires_at);
            CREATE INDEX IF NOT EXISTS feeds_expiry ON feeds (expires_at);
            """
        )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); only an OS crash can
            # lose the last transactions, which at-least-once delivery then recomputes.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, request_id: str) -> bytes | None:
        row = (
            self._conn()
            .execute(
                "SELECT feed FROM feeds WHERE request_id = ? AND expires_at > ?",
                (request_id, time.time()),
            )
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    def seen(self, user_id: int) -> set[int]:
        rows = (
            self._conn()
            .execute(
                "SELECT tweet_ids FROM feeds WHERE user_id = ? AND expires_at > ?",
                (user_id, time.time()),
            )
            .fetchall()
        )
        return {int(t) for (ids,) in rows for t in ids.split(",") if t}

    def put_many(self, feeds: Iterable[tuple[RankedFeed, bytes]]) -> None:
        now = time.time()
        rows = [
            (
                feed.request_id,
                feed.user_id,
                now + self.ttl_s,
                ",".join(str(item.tweet_id) for item in feed.items),
                payload,
            )
            for feed, payload in feeds
        ]
        if not rows:
            return
        conn = self._conn()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO feeds VALUES (?, ?, ?, ?, ?)", rows)
            if now - self._last_purge_s > 60.0:
                conn.execute("DELETE FROM feeds WHERE expires_at <= ?", (now,))
                self._last_purge_s = now

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class RedisFeedCache:
    """Feed cache in redis-server: one key per feed and one sorted set of seen tweets per user.

    The seen set scores each tweet by its expiry time, so expired entries are trimmed by
    score and the set itself expires when the user stops fetching.
    """

    def __init__(
        self, host: str, port: int, ttl_s: int, password: str | None = None, **options: Any
    ) -> None:
        """``options``: more ``redis.Redis`` arguments (a serve process's
        :func:`feedrank.config.redis_serving_options`)."""
        import redis

        self.ttl_s = ttl_s
        self._redis = redis.Redis(host=host, port=port, password=password, **options)

    def get(self, request_id: str) -> bytes | None:
        return self._redis.get(f"{_KEY_PREFIX}:feed:{request_id}")

    def seen(self, user_id: int) -> set[int]:
        key = f"{_KEY_PREFIX}:seen:{user_id}"
        now = time.time()
        pipe = self._redis.pipeline()
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zrange(key, 0, -1)
        _, members = pipe.execute()
        return {int(m) for m in members}

    def put_many(self, feeds: Iterable[tuple[RankedFeed, bytes]]) -> None:
        expires_at = time.time() + self.ttl_s
        pipe = self._redis.pipeline(transaction=False)
        for feed, payload in feeds:
            pipe.set(f"{_KEY_PREFIX}:feed:{feed.request_id}", payload, ex=self.ttl_s)
            if feed.items:
                key = f"{_KEY_PREFIX}:seen:{feed.user_id}"
                pipe.zadd(key, {str(item.tweet_id): expires_at for item in feed.items})
                pipe.expire(key, self.ttl_s)
        pipe.execute()

    def close(self) -> None:
        self._redis.close()


class TolerantFeedCache:
    """A feed cache whose failures (its server stopped, say) are answered around, not raised.

    The cache only makes duplicates harmless and feeds fresher; serving must not stop
    without it. While it fails: ``get`` misses (a redelivered request is recomputed),
    ``seen`` is empty (a tweet may be served to a user again) and ``put_many`` drops the
    feeds. Each failure is counted (``feedrank_serving_dependency_errors_total``); the first
    of an outage and the recovery are logged.
    """

    def __init__(self, inner: FeedCache) -> None:
        self.inner = inner
        self.failing = False

    def _failed(self, exc: Exception) -> None:
        metrics.DEPENDENCY_ERRORS.labels(dependency="feed_cache").inc()
        if not self.failing:
            log.warning("feed cache unavailable, serving without it: %s", exc)
        self.failing = True

    def _answered(self) -> None:
        if self.failing:
            log.info("feed cache answers again")
        self.failing = False

    def get(self, request_id: str) -> bytes | None:
        try:
            value = self.inner.get(request_id)
        except Exception as exc:
            self._failed(exc)
            return None
        self._answered()
        return value

    def seen(self, user_id: int) -> set[int]:
        try:
            value = self.inner.seen(user_id)
        except Exception as exc:
            self._failed(exc)
            return set()
        self._answered()
        return value

    def put_many(self, feeds: Iterable[tuple[RankedFeed, bytes]]) -> None:
        try:
            self.inner.put_many(feeds)
        except Exception as exc:
            self._failed(exc)
            return
        self._answered()

    def close(self) -> None:
        self.inner.close()


def open_feed_cache(settings: Settings) -> FeedCache:
    """The profile's feed cache: Redis where the profile runs Redis, SQLite otherwise;
    failures tolerated (:class:`TolerantFeedCache`)."""
    ttl_s = settings.serving.feed_cache_ttl_s
    if settings.feast.online_store == "redis":
        return TolerantFeedCache(
            RedisFeedCache(
                **redis_client_kwargs(settings), ttl_s=ttl_s, **redis_serving_options(settings)
            )
        )
    return TolerantFeedCache(
        SqliteFeedCache(settings.paths.home / "serving" / "feed_cache.sqlite", ttl_s)
    )
