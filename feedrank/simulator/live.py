"""Live mode: the simulated world as a stream of events on the real Kafka broker.

Long because: one live loop: producers, the feed reader and the closed-loop engagement
scheduler.

Events are ``feedrank.schemas.encode()`` JSON: ``tweets`` (keyed by tweet id), ``follows``
(keyed by follower) and ``feed_requests`` (keyed by user, ``serving_candidates`` candidates
each) at a chosen request rate; tweets and follows keep the world's ratio to requests. At
start, two days of tweets (created in the past 48 h) are published so the first requests
have candidates.

Closed loop: the simulator also reads ``ranked_feeds``, keeps the feeds answering its own
requests, walks each feed in the order shown (the user stops at a random depth, as in the
backfill), draws engagements from the ground truth and publishes each to ``engagements`` when
it is due. Engagement delays follow the backfill's distribution multiplied by
``delay_scale`` (default 0.05, so a short demo sees most of them; 1.0 is real time).
The serving layer logs impressions; the simulator only produces engagements.

Event times (requests, tweets, follows, engagements) are the wall clock plus
``clock.offset_s``, the same shift serving applies, so a live run can play on a simulated day
other than today (the demo's ``--today``) while time still passes at the real rate.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feedrank.config import HEADS, Settings, SimulatorConfig, Topics
from feedrank.errors import FeedrankError
from feedrank.schemas import (
    DEVICES,
    DeadLetter,
    Engagement,
    FeedRequest,
    Follow,
    RankedFeed,
    Tweet,
    decode_record,
    encode,
)
from feedrank.simulator.backfill import NEW_FOLLOWS_PER_USER_PER_DAY
from feedrank.simulator.engagement import draw_delays_s, draw_engagements
from feedrank.simulator.world import CANDIDATE_WINDOW_S, SECONDS_PER_DAY, World

log = logging.getLogger("feedrank.simulator.live")

TICK_S = 0.05
DEFAULT_DELAY_SCALE = 0.05
DEFAULT_DRAIN_S = 10.0
_PEAK_SD_H = 2.5


@dataclass
class LiveStats:
    """What one live run produced and consumed."""

    requests: int = 0
    tweets: int = 0
    follows: int = 0
    feeds_received: int = 0
    feeds_foreign: int = 0
    feeds_dead_lettered: int = 0
    items_unknown: int = 0
    impressions_viewed: int = 0
    requests_unanswered: int = 0
    engagements: dict[str, int] = field(default_factory=lambda: dict.fromkeys(HEADS, 0))
    engagements_undelivered: int = 0
    request_ids: list[str] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Counts only (request ids left out)."""
        out = asdict(self)
        out.pop("request_ids")
        return out


def _now_us() -> int:
    return time.time_ns() // 1_000


def _dt(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1e6, tz=dt.UTC)


class LiveSimulator:
    """One live run: a producer, optionally a ``ranked_feeds`` reader, and the world's truth.

    Args:
        settings: resolved settings (Kafka address, simulator sizes).
        seed: world seed (default ``simulator.seed``); the world matches a backfill's.
        users: overrides ``simulator.users``.
        closed_loop: also engage with the feeds served for this run's requests.
        delay_scale: multiplies engagement delays (1.0 is real time).
    """

    def __init__(
        self,
        settings: Settings,
        seed: int | None = None,
        users: int | None = None,
        closed_loop: bool = False,
        delay_scale: float = DEFAULT_DELAY_SCALE,
    ) -> None:
        if delay_scale <= 0:
            raise ValueError(f"delay_scale must be > 0, got {delay_scale}")
        updates = {k: v for k, v in {"seed": seed, "users": users}.items() if v is not None}
        self.config = SimulatorConfig.model_validate({**settings.simulator.model_dump(), **updates})
        self.settings = settings
        self.world = World.build(self.config)
        self.closed_loop = closed_loop
        self.delay_scale = delay_scale
        self.clock_offset_us = settings.clock.offset_s * 1_000_000
        self.stats = LiveStats()
        self.rng = np.random.default_rng([self.config.seed, 100, _now_us()])
        self.run_tag = f"lv{self.config.seed}-{_now_us() // 1000:x}"
        self.next_tweet_id = (_now_us() // 1000) * 1000  # snowflake-like: above backfill ids
        self.pending: dict[str, tuple[int, int, int]] = {}  # request -> (user, us, device)
        self.scheduled: list[tuple[int, int, bytes, bytes]] = []  # (due_us, seq, key, value)
        self._seq = 0
        self.producer, self.consumer = self._connect()

    def _connect(self) -> tuple[Any, Any]:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition
        from kafka.errors import KafkaError

        from feedrank.readiness import kafka_ready

        bootstrap = self.settings.kafka.bootstrap_servers
        if not kafka_ready(self.settings, principal="simulator"):
            raise FeedrankError(f"Kafka not reachable at {bootstrap} (start it with make up)")
        try:
            producer = KafkaProducer(
                **self.settings.kafka.client_options("simulator"),
                client_id=f"simulator-{self.run_tag}",
                **self.settings.kafka.producer_options(),
                linger_ms=5,
                max_block_ms=10_000,
            )
            consumer = None
            if self.closed_loop:
                consumer = KafkaConsumer(
                    **self.settings.kafka.client_options("simulator"),
                    client_id=f"simulator-{self.run_tag}-feeds",
                    group_id=None,
                    enable_auto_commit=False,
                )
                partitions = consumer.partitions_for_topic(Topics.RANKED_FEEDS)
                if not partitions:
                    producer.close()
                    raise FeedrankError(
                        f"topic {Topics.RANKED_FEEDS!r} does not exist (run make up)"
                    )
                assigned = [TopicPartition(Topics.RANKED_FEEDS, p) for p in sorted(partitions)]
                consumer.assign(assigned)
                # Only feeds answering this run's requests matter: start at the end.
                consumer.seek_to_end(*assigned)
                for tp in assigned:
                    consumer.position(tp)
        except KafkaError as exc:
            raise FeedrankError(f"Kafka not reachable at {bootstrap}: {exc}") from exc
        return producer, consumer

    # ---------------------------------------------------------------- producing

    def now_us(self) -> int:
        """The simulated now: the wall clock shifted by ``clock.offset_s``."""
        return _now_us() + self.clock_offset_us

    def _send(self, topic: str, key: int | str, value: bytes) -> None:
        self.producer.send(topic, key=str(key).encode(), value=value)

    def _publish_tweets(self, author_idx: np.ndarray, created_us: np.ndarray) -> None:
        order = np.argsort(created_us, kind="stable")
        batch = self.world.tweet_attributes(
            author_idx[order], created_us[order], self.next_tweet_id, self.rng
        )
        self.next_tweet_id += len(order)
        self.world.tweets.append(batch)
        for i in range(len(order)):
            tweet = Tweet(
                tweet_id=int(batch["tweet_id"][i]),
                author_id=int(batch["author_id"][i]),
                created_at=_dt(int(batch["created_us"][i])),
                topic=int(batch["topic"][i]),
                has_media=bool(batch["has_media"][i]),
                has_link=bool(batch["has_link"][i]),
                length=int(batch["length"][i]),
                language=str(batch["language"][i]),
            )
            self._send(Topics.TWEETS, tweet.tweet_id, encode(tweet))
        self.stats.tweets += len(order)

    def _authors(self, n: int) -> np.ndarray:
        rate = self.world.author_tweets_per_day
        return self.rng.choice(self.world.n_authors, size=n, p=rate / rate.sum())

    def warm_up(self, now_us: int) -> None:
        """Publish the tweets of the last 48 h so the first requests have candidates."""
        days = CANDIDATE_WINDOW_S / SECONDS_PER_DAY
        n = int(self.rng.poisson(self.world.author_tweets_per_day.sum() * days))
        created = now_us - self.rng.integers(1, CANDIDATE_WINDOW_S * 1_000_000, n)
        self._publish_tweets(self._authors(n), created)

    def _request_users(self, n: int, now_us: int) -> np.ndarray:
        hour = (now_us / 3.6e9) % 24.0
        gap = np.abs(np.mod(hour - self.world.peak_hour_utc, 24.0))
        gap = np.minimum(gap, 24.0 - gap)
        # Who is online now: activity times the user's active-hour density (as in backfills).
        weight = self.world.requests_per_day * (
            0.3 / 24.0 + 0.7 * np.exp(-0.5 * (gap / _PEAK_SD_H) ** 2) / (_PEAK_SD_H * 2.5066)
        )
        return self.rng.choice(self.world.n_users, size=n, p=weight / weight.sum())

    def publish_requests(self, n: int, now_us: int) -> None:
        """Publish ``n`` feed requests made now."""
        users = self._request_users(n, now_us)
        devices = self.world.request_devices(users, self.rng)
        times = np.full(n, now_us, dtype=np.int64)
        rows, tweet_idx = self.world.select_candidates(
            users, times, self.config.serving_candidates, self.rng
        )
        tweet_ids = self.world.tweets.tweet_id
        for i in range(n):
            candidates = np.sort(tweet_ids[tweet_idx[rows == i]])
            if len(candidates) == 0:
                continue
            request_id = f"{self.run_tag}-{self.stats.requests:07d}"
            request = FeedRequest(
                request_id=request_id,
                user_id=int(users[i]),
                requested_at=_dt(now_us),
                device=DEVICES[int(devices[i])],
                candidate_tweet_ids=candidates.tolist(),
            )
            self._send(Topics.FEED_REQUESTS, request.user_id, encode(request))
            if self.closed_loop:
                self.pending[request_id] = (int(users[i]), now_us, int(devices[i]))
            self.stats.requests += 1
            self.stats.request_ids.append(request_id)

    def publish_follows(self, n: int, now_us: int) -> None:
        """Publish ``n`` new follow edges made now (they count for candidates at once)."""
        followers, followees = self.world.new_follows(n, self.rng)
        for follower, followee in zip(followers, followees, strict=True):
            event = Follow(
                follower_id=int(follower), followee_id=int(followee), created_at=_dt(now_us)
            )
            self._send(Topics.FOLLOWS, event.follower_id, encode(event))
        self.stats.follows += len(followers)

    # ---------------------------------------------------------------- closed loop

    def engage(self, feed: RankedFeed) -> None:
        """Walk a served feed in the order shown and schedule the engagements it earns."""
        user, request_us, device = self.pending.pop(feed.request_id)
        items = sorted(feed.items, key=lambda item: item.position)
        if not items:
            return
        depth = int(self.rng.geometric(min(1.0, 1.0 / self.world.view_depth_mean[user])))
        viewed = items[:depth]
        known = np.isin([it.tweet_id for it in viewed], self.world.tweets.tweet_id)
        self.stats.items_unknown += int((~known).sum())
        viewed = [it for it, ok in zip(viewed, known, strict=True) if ok]
        if not viewed:
            return
        self.stats.impressions_viewed += len(viewed)
        n = len(viewed)
        probs = self.world.true_probabilities(
            np.full(n, user),
            np.array([it.tweet_id for it in viewed]),
            np.full(n, request_us / 1e6),
            np.full(n, device),
            np.arange(n),  # the position the user actually saw, in the order shown
        )
        drawn = draw_engagements(probs, self.rng)
        served_us = int(feed.served_at.timestamp() * 1e6)
        # The author is the world's, whatever the feed claims.
        authors = self.world.tweets.author_id[
            self.world.tweets.index_of(np.array([it.tweet_id for it in viewed]))
        ]
        for head in HEADS:
            hits = np.flatnonzero(drawn[head])
            delays_us = draw_delays_s(head, len(hits), self.rng) * self.delay_scale * 1e6
            for idx, delay_us in zip(hits, delays_us, strict=True):
                engaged_us = served_us + int(delay_us)
                event = Engagement(
                    request_id=feed.request_id,
                    user_id=user,
                    tweet_id=viewed[idx].tweet_id,
                    author_id=int(authors[idx]),
                    head=head,
                    engaged_at=_dt(engaged_us),
                )
                self._seq += 1
                heapq.heappush(
                    self.scheduled, (engaged_us, self._seq, str(user).encode(), encode(event))
                )

    def read_feeds(self) -> None:
        """Consume whatever ``ranked_feeds`` holds now; keep this run's feeds."""
        if self.consumer is None:
            return
        batch = self.consumer.poll(timeout_ms=0, max_records=500)
        for records in batch.values():
            for record in records:
                event = decode_record(Topics.RANKED_FEEDS, record)
                if isinstance(event, DeadLetter):
                    self.stats.feeds_dead_lettered += 1
                    self.producer.send(event.dlq_topic, value=event.to_bytes())
                    log.warning("dead-lettered a ranked feed: %s", event.reason)
                    continue
                assert isinstance(event, RankedFeed)
                if event.request_id not in self.pending:
                    self.stats.feeds_foreign += 1
                    continue
                self.stats.feeds_received += 1
                self.engage(event)

    def release_due(self, now_us: int) -> None:
        """Publish the engagements whose time has come."""
        while self.scheduled and self.scheduled[0][0] <= now_us:
            _, _, key, value = heapq.heappop(self.scheduled)
            self.producer.send(Topics.ENGAGEMENTS, key=key, value=value)
            head = Engagement.model_validate_json(value).head
            self.stats.engagements[head] += 1

    def close(self) -> None:
        """Flush and close the Kafka clients."""
        self.stats.engagements_undelivered = len(self.scheduled)
        self.stats.requests_unanswered = len(self.pending)
        self.producer.flush(timeout=30)
        self.producer.close(timeout=10)
        if self.consumer is not None:
            self.consumer.close(autocommit=False)


def run_live(
    settings: Settings,
    rate_rps: float,
    duration_s: float,
    closed_loop: bool = False,
    seed: int | None = None,
    users: int | None = None,
    delay_scale: float = DEFAULT_DELAY_SCALE,
    drain_s: float = DEFAULT_DRAIN_S,
    progress: bool = True,
    lake: Path | None = None,
) -> LiveStats:
    """Stream the simulated world to Kafka for ``duration_s`` seconds.

    Args:
        settings: resolved settings.
        rate_rps: feed requests per second.
        duration_s: how long to produce requests.
        closed_loop: engage with the ``ranked_feeds`` answering this run's requests.
        seed: world seed (default ``simulator.seed``).
        users: overrides ``simulator.users``.
        delay_scale: multiplies engagement delays (1.0 is real time).
        drain_s: after the last request, how long to wait for feeds and due engagements.
        progress: show a progress bar.
        lake: replay mode: take tweets and follows from this lake (a backfill whose last day
            ends about now) instead of posting new tweets, so every candidate is one the
            feature store already knows. Without it new tweets are posted live; they are
            unknown to the online store until the batch side has seen them.

    Returns:
        Counts of what was produced and consumed; ``request_ids`` lists this run's requests.
    """
    from feedrank.logs import progress_bar

    if rate_rps <= 0 or duration_s <= 0 or drain_s < 0:
        raise ValueError("rate_rps and duration_s must be > 0 and drain_s >= 0")
    sim = LiveSimulator(
        settings, seed=seed, users=users, closed_loop=closed_loop, delay_scale=delay_scale
    )
    world = sim.world
    per_request = 1.0 / (world.n_users * sim.config.requests_per_user_per_day)
    tweets_per_request = world.author_tweets_per_day.sum() * per_request
    follows_per_request = NEW_FOLLOWS_PER_USER_PER_DAY * world.n_users * per_request
    if lake is not None:
        from feedrank.lake import read_lake_table

        world.load_tweets(read_lake_table(lake, "tweets"))
        world.load_follows(read_lake_table(lake, "follows"), before_us=sim.now_us())
        tweets_per_request = 0.0
    try:
        if lake is None:
            sim.warm_up(sim.now_us())
        start = time.monotonic()
        sent_requests, tweet_budget, follow_budget = 0, 0.0, 0.0
        with progress_bar(
            total=round(duration_s, 1), desc="simulate --live", unit="s", enabled=progress
        ) as bar:
            while (elapsed := time.monotonic() - start) < duration_s:
                now_us = sim.now_us()
                due = int(elapsed * rate_rps) + 1 - sent_requests
                if due > 0:
                    sim.publish_requests(due, now_us)
                    sent_requests += due
                    tweet_budget += due * tweets_per_request
                    follow_budget += due * follows_per_request
                    n_tweets, n_follows = int(tweet_budget), int(follow_budget)
                    if n_tweets:
                        sim._publish_tweets(sim._authors(n_tweets), np.full(n_tweets, now_us))
                        tweet_budget -= n_tweets
                    if n_follows:
                        sim.publish_follows(n_follows, now_us)
                        follow_budget -= n_follows
                sim.read_feeds()
                sim.release_due(sim.now_us())
                bar.n = round(min(elapsed, duration_s), 1)
                bar.set_postfix(
                    requests=sim.stats.requests,
                    engagements=sum(sim.stats.engagements.values()),
                    refresh=False,
                )
                bar.refresh()
                time.sleep(TICK_S)
        if closed_loop:
            sim.producer.flush(timeout=30)
            drain_until = time.monotonic() + drain_s
            while time.monotonic() < drain_until and (sim.pending or sim.scheduled):
                sim.read_feeds()
                sim.release_due(sim.now_us())
                time.sleep(TICK_S)
    finally:
        sim.close()
    log.info("live run done: %s", sim.stats.as_dict())
    return sim.stats
