"""The feed cache behind replay and seen dedupe: SQLite (local) and Redis (redis profile)."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest

from feedrank.config import Settings, redis_client_kwargs
from feedrank.schemas import RankedFeed, RankedItem, encode
from serving.feed_cache import RedisFeedCache, SqliteFeedCache


def _feed(user_id: int, tweet_ids: list[int]) -> tuple[RankedFeed, bytes]:
    now = dt.datetime.now(dt.UTC)
    feed = RankedFeed(
        request_id=uuid.uuid4().hex,
        user_id=user_id,
        model_version="v1",
        degraded=False,
        items=[
            RankedItem(tweet_id=t, author_id=1, score=1.0 / (i + 1), position=i)
            for i, t in enumerate(tweet_ids)
        ],
        requested_at=now,
        served_at=now,
        deadline_at=now,
    )
    return feed, encode(feed)


def _exercise(cache, ttl_s: int) -> None:
    first, first_bytes = _feed(1, [10, 11, 12])
    second, second_bytes = _feed(1, [13])
    other, other_bytes = _feed(2, [99])
    assert cache.get(first.request_id) is None and cache.seen(1) == set()
    cache.put_many([(first, first_bytes), (second, second_bytes), (other, other_bytes)])
    assert cache.get(first.request_id) == first_bytes
    assert cache.seen(1) == {10, 11, 12, 13}
    assert cache.seen(2) == {99}
    time.sleep(ttl_s + 0.2)
    assert cache.get(first.request_id) is None  # expired entries are gone
    assert cache.seen(1) == set()


@pytest.mark.unit
def test_sqlite_feed_cache_replays_and_expires(tmp_path) -> None:
    cache = SqliteFeedCache(tmp_path / "cache.sqlite", ttl_s=1)
    try:
        _exercise(cache, ttl_s=1)
    finally:
        cache.close()


@pytest.mark.integration
def test_redis_feed_cache_replays_and_expires(redis_server: Settings) -> None:
    cache = RedisFeedCache(**redis_client_kwargs(redis_server), ttl_s=1)
    try:
        _exercise(cache, ttl_s=1)
    finally:
        cache.close()
