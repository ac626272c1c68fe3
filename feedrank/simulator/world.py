"""The simulated world: users, authors, follow graph, latent tastes, tweets, candidates.

Long because: the world's state and its ground-truth model are one object.

Everything is a deterministic function of ``(SimulatorConfig, seed)``: the same pair builds
the same world. User ids are ``0..users-1``; authors are a subset of users (``author_id`` is
the author's user id); tweet ids start at :data:`TWEET_ID_BASE` so they can never be
confused with user ids in a join.

The latent quantities that drive engagement (see :mod:`feedrank.simulator.engagement`):

- ``interest[u, k]``: user×topic taste; two favourite topics per user, learnable from the
  user's engagement rates per topic (``ut_*`` features).
- ``affinity(u, a)``: user×author taste, a hash of the pair (no storage, any world size);
  learnable only from the user's past interactions with that author (``ua_*`` features).
- ``author_quality[a]``: learnable from the author's engagement rates (``author_*``).
- ``peak_hour_utc[u]``: the user's activity peak, set by their time zone; requests cluster
  around it and engagement is higher near it (``ctx_hours_from_user_peak``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from scipy.special import ndtri

from feedrank.config import SimulatorConfig
from feedrank.context import context_features
from feedrank.schemas import DEVICES
from feedrank.simulator.engagement import true_probabilities

TWEET_ID_BASE = 1_000_000_000
SECONDS_PER_DAY = 86_400
CANDIDATE_WINDOW_S = 48 * 3600  # candidates are tweets of the last two days
IN_NETWORK_SHARE = 0.5  # Twitter's published in-network share of candidates
MEAN_VIEW_DEPTH = 40.0  # mean positions a user scrolls through per feed
AFFINITY_SD = 1.0
LANGUAGES: tuple[str, ...] = ("en", "es", "ja", "pt", "fr")
LANGUAGE_SHARES = (0.7, 0.12, 0.08, 0.06, 0.04)
# Time-zone offsets (hours) and how many users live in each.
TZ_OFFSETS_H = np.array([-8, -5, -3, 0, 1, 2, 5, 8, 9, 10])
TZ_SHARES = np.array([0.14, 0.2, 0.08, 0.1, 0.14, 0.06, 0.1, 0.06, 0.08, 0.04])
DEVICE_SHARES = (0.6, 0.3, 0.1)  # primary device: mobile, web, tablet
PRIMARY_DEVICE_STICKINESS = 0.8  # chance a request comes from the user's primary device
MAX_BATCH_CELLS = 4_000_000  # rows × pool cells per candidate-selection chunk (memory)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on uint64 arrays (wrapping arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def _lognormal_with_mean(rng: np.random.Generator, mean: float, sigma: float, n: int) -> np.ndarray:
    return mean * np.exp(sigma * rng.standard_normal(n) - sigma**2 / 2.0)


def _circular_hours(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    gap = np.abs(np.mod(a - b, 24.0))
    return np.minimum(gap, 24.0 - gap)


def stage_rng(seed: int, stage: int, *keys: int) -> np.random.Generator:
    """An independent generator per (seed, stage, keys): adding days never changes others."""
    return np.random.default_rng([seed, stage, *keys])


@dataclass
class TweetStore:
    """All tweets the world knows, ordered by creation time (ids increase with it)."""

    tweet_id: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    author_id: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    topic: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    has_media: np.ndarray = field(default_factory=lambda: np.empty(0, bool))
    has_link: np.ndarray = field(default_factory=lambda: np.empty(0, bool))
    length: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    language: np.ndarray = field(default_factory=lambda: np.empty(0, object))
    created_us: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    COLUMNS = (
        "tweet_id",
        "author_id",
        "topic",
        "has_media",
        "has_link",
        "length",
        "language",
        "created_us",
    )

    def __len__(self) -> int:
        return len(self.tweet_id)

    def append(self, batch: dict[str, np.ndarray]) -> None:
        """Add tweets created no earlier than the newest known one."""
        if len(batch["tweet_id"]) == 0:
            return
        if len(self) and (
            batch["created_us"][0] < self.created_us[-1]
            or batch["tweet_id"][0] <= self.tweet_id[-1]
        ):
            raise ValueError("tweets must be appended in creation and id order")
        for name in self.COLUMNS:
            setattr(self, name, np.concatenate([getattr(self, name), batch[name]]))

    def index_of(self, tweet_ids: np.ndarray) -> np.ndarray:
        """Positions of ``tweet_ids`` in the store; ``ValueError`` for an unknown id."""
        ids = np.asarray(tweet_ids, dtype=np.int64)
        pos = np.searchsorted(self.tweet_id, ids).clip(0, max(len(self) - 1, 0))
        if len(self) == 0 or not np.array_equal(self.tweet_id[pos], ids):
            unknown = ids[(len(self) == 0) | (self.tweet_id[pos] != ids)] if len(self) else ids
            raise ValueError(f"unknown tweet id(s): {unknown[:5].tolist()}")
        return pos


@dataclass
class World:
    """The simulated users, authors and tweets, and their latent tastes."""

    config: SimulatorConfig
    seed: int
    start_date: dt.date
    # users (index == user_id)
    tz_offset_hours: np.ndarray
    peak_hour_utc: np.ndarray
    requests_per_day: np.ndarray
    primary_device: np.ndarray
    view_depth_mean: np.ndarray
    is_author: np.ndarray
    author_index: np.ndarray  # user id -> author index, -1 for non-authors
    interest: np.ndarray  # [users, topics]
    created_us: np.ndarray
    # authors (index 0..A-1)
    author_ids: np.ndarray
    author_topic: np.ndarray
    author_quality: np.ndarray
    author_popularity: np.ndarray
    author_tweets_per_day: np.ndarray
    author_media_share: np.ndarray
    author_language: np.ndarray
    follows: np.ndarray  # bool [users, authors], the current follow graph
    tweets: TweetStore = field(default_factory=TweetStore)

    @property
    def n_users(self) -> int:
        return len(self.tz_offset_hours)

    @property
    def n_authors(self) -> int:
        return len(self.author_ids)

    @property
    def start_us(self) -> int:
        """Midnight UTC of the first simulated day, microseconds since the epoch."""
        start = dt.datetime.combine(self.start_date, dt.time(), tzinfo=dt.UTC)
        return int(start.timestamp()) * 1_000_000

    @classmethod
    def build(cls, config: SimulatorConfig, seed: int | None = None) -> World:
        """Build the world of ``config`` for ``seed`` (default ``config.seed``).

        Args:
            config: sizes and rates (users, author share, topics, posting and request rates).
            seed: overrides ``config.seed``.

        Returns:
            A world with its initial follow graph and no tweets yet.
        """
        seed = config.seed if seed is None else seed
        try:
            start_date = dt.date.fromisoformat(config.start_date)
        except ValueError as exc:
            raise ValueError(
                f"simulator start_date {config.start_date!r} is not YYYY-MM-DD"
            ) from exc
        rng = stage_rng(seed, 1)
        n, n_topics = config.users, config.topics
        n_authors = max(2, round(config.author_share * n))
        if n_authors >= n:
            n_authors = n - 1
        tz = rng.choice(TZ_OFFSETS_H, size=n, p=TZ_SHARES / TZ_SHARES.sum()).astype(np.int32)
        local_peak = np.clip(rng.normal(20.0, 2.5, n), 6.0, 26.0)
        peak_utc = np.mod(local_peak - tz, 24.0)
        requests_per_day = _lognormal_with_mean(rng, config.requests_per_user_per_day, 0.7, n)
        primary_device = rng.choice(len(DEVICES), size=n, p=DEVICE_SHARES).astype(np.int8)
        view_depth_mean = _lognormal_with_mean(rng, MEAN_VIEW_DEPTH, 0.5, n)
        favourites = np.argsort(rng.random((n, n_topics)), axis=1)[:, :2]
        interest = 0.6 * rng.standard_normal((n, n_topics)) - 0.3
        np.put_along_axis(
            interest, favourites, np.take_along_axis(interest, favourites, axis=1) + 1.6, axis=1
        )
        created_us = (
            (
                dt.datetime.combine(start_date, dt.time(), tzinfo=dt.UTC).timestamp()
                - SECONDS_PER_DAY
            )
            * 1_000_000
            + rng.integers(0, SECONDS_PER_DAY * 1_000_000, n)
        ).astype(np.int64)

        author_ids = np.sort(rng.choice(n, size=n_authors, replace=False)).astype(np.int64)
        is_author = np.zeros(n, bool)
        is_author[author_ids] = True
        author_index = np.full(n, -1, np.int64)
        author_index[author_ids] = np.arange(n_authors)
        author_topic = rng.integers(0, n_topics, n_authors).astype(np.int32)
        author_quality = rng.normal(0.0, 0.6, n_authors)
        author_popularity = (rng.pareto(1.3, n_authors) + 1.0) * np.exp(0.5 * author_quality)
        author_tweets_per_day = _lognormal_with_mean(
            rng, config.tweets_per_author_per_day, 0.8, n_authors
        )
        author_media_share = rng.beta(2.0, 4.0, n_authors)
        author_language = rng.choice(len(LANGUAGES), size=n_authors, p=LANGUAGE_SHARES)

        world = cls(
            config=config,
            seed=seed,
            start_date=start_date,
            tz_offset_hours=tz,
            peak_hour_utc=peak_utc,
            requests_per_day=requests_per_day,
            primary_device=primary_device,
            view_depth_mean=view_depth_mean,
            is_author=is_author,
            author_index=author_index,
            interest=interest,
            created_us=created_us,
            author_ids=author_ids,
            author_topic=author_topic,
            author_quality=author_quality,
            author_popularity=author_popularity,
            author_tweets_per_day=author_tweets_per_day,
            author_media_share=author_media_share,
            author_language=author_language,
            follows=np.zeros((n, n_authors), bool),
        )
        world._initial_follows(rng)
        return world

    def _follow_keys(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Gumbel keys for following: heavy-tailed popularity times topic homophily."""
        keys = (
            np.log(self.author_popularity)[None, :]
            + 1.2 * self.interest[users][:, self.author_topic]
            + rng.gumbel(size=(len(users), self.n_authors))
        )
        keys[self.author_ids[None, :] == users[:, None]] = -np.inf  # nobody follows themself
        return keys

    def _initial_follows(self, rng: np.random.Generator) -> None:
        n_follow = np.clip(
            np.round(_lognormal_with_mean(rng, 30.0, 0.8, self.n_users)), 3, self.n_authors - 1
        ).astype(np.int64)
        rows_per_chunk = max(1, MAX_BATCH_CELLS // self.n_authors)
        for lo in range(0, self.n_users, rows_per_chunk):
            users = np.arange(lo, min(lo + rows_per_chunk, self.n_users))
            order = np.argsort(-self._follow_keys(users, rng), axis=1, kind="stable")
            rank = np.empty_like(order)
            np.put_along_axis(rank, order, np.arange(self.n_authors)[None, :], axis=1)
            self.follows[users] = rank < n_follow[users, None]

    def follow_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The current follow graph as (follower_id, followee_id) arrays, sorted."""
        users, authors = np.nonzero(self.follows)
        return users.astype(np.int64), self.author_ids[authors]

    def new_follows(
        self, n_follows: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pick ``n_follows`` new (follower, author) pairs and add them to the graph.

        Returns:
            (follower_ids, followee_ids) of the new edges (users drawn without repeats).
        """
        n_follows = min(n_follows, self.n_users)
        users = np.sort(rng.choice(self.n_users, size=n_follows, replace=False))
        keys = self._follow_keys(users, rng)
        keys[self.follows[users]] = -np.inf
        best = np.argmax(keys, axis=1)
        ok = np.isfinite(keys[np.arange(len(users)), best])
        users, best = users[ok], best[ok]
        self.follows[users, best] = True
        return users.astype(np.int64), self.author_ids[best]

    def load_tweets(self, tweets: pa.Table) -> None:
        """Register tweets read from the lake (``tweets`` table) so their truth can be asked.

        Tweets already known are skipped; the rest are appended in creation order.
        """
        table = tweets.sort_by([("created_at", "ascending"), ("tweet_id", "ascending")])
        ids = table.column("tweet_id").to_numpy()
        if len(self.tweets):
            table = table.filter(pa.array(ids > self.tweets.tweet_id[-1]))
        self.tweets.append(
            {
                "tweet_id": table.column("tweet_id").to_numpy().astype(np.int64),
                "author_id": table.column("author_id").to_numpy().astype(np.int64),
                "topic": table.column("topic").to_numpy().astype(np.int32),
                "has_media": table.column("has_media").to_numpy(zero_copy_only=False).astype(bool),
                "has_link": table.column("has_link").to_numpy(zero_copy_only=False).astype(bool),
                "length": table.column("length").to_numpy().astype(np.int32),
                "language": table.column("language").to_numpy(zero_copy_only=False).astype(object),
                "created_us": table.column("created_at").cast(pa.int64()).to_numpy(),
            }
        )

    def load_follows(self, follows: pa.Table, before_us: int | None = None) -> None:
        """Add the edges of a ``follows`` table (created before ``before_us``) to the graph."""
        followers = follows.column("follower_id").to_numpy().astype(np.int64)
        followees = follows.column("followee_id").to_numpy().astype(np.int64)
        ok = (followers < self.n_users) & (followees < self.n_users)
        if before_us is not None:
            ok &= follows.column("created_at").cast(pa.int64()).to_numpy() < before_us
        a_idx = self.author_index[followees[ok]]
        if (a_idx < 0).any():
            raise ValueError("follows of accounts that are not authors of this world")
        self.follows[followers[ok], a_idx] = True

    def affinity(self, user_ids: np.ndarray, author_ids: np.ndarray) -> np.ndarray:
        """Latent user×author affinity: a standard normal hashed from (seed, user, author)."""
        u = np.asarray(user_ids).astype(np.uint64)
        a = np.asarray(author_ids).astype(np.uint64)
        with np.errstate(over="ignore"):
            h = _splitmix64(_splitmix64(np.uint64(self.seed) ^ (u * np.uint64(0x9E3779B1))) ^ a)
        uniform = ((h >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
        return AFFINITY_SD * ndtri(uniform)

    def tweet_attributes(
        self,
        author_idx: np.ndarray,
        created_us: np.ndarray,
        first_id: int,
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        """Attributes of new tweets by ``author_idx`` (sorted by ``created_us`` by the caller)."""
        n = len(author_idx)
        own_topic = rng.random(n) < 0.7
        topic = np.where(
            own_topic, self.author_topic[author_idx], rng.integers(0, self.config.topics, n)
        ).astype(np.int32)
        length = np.clip(np.round(110.0 * np.exp(0.6 * rng.standard_normal(n))), 1, 280)
        return {
            "tweet_id": first_id + np.arange(n, dtype=np.int64),
            "author_id": self.author_ids[author_idx],
            "topic": topic,
            "has_media": rng.random(n) < self.author_media_share[author_idx],
            "has_link": rng.random(n) < 0.2,
            "length": length.astype(np.int32),
            "language": np.asarray(LANGUAGES, dtype=object)[self.author_language[author_idx]],
            "created_us": np.asarray(created_us, dtype=np.int64),
        }

    def active_hour_offsets_s(self, peak_hour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Seconds into a UTC day, clustered around each peak hour (30% spread uniformly)."""
        n = len(peak_hour)
        hours = np.where(
            rng.random(n) < 0.7, peak_hour + rng.normal(0.0, 2.5, n), rng.uniform(0.0, 24.0, n)
        )
        return np.mod(hours * 3600.0, float(SECONDS_PER_DAY))

    def request_devices(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Device code per request: mostly the user's primary device."""
        n = len(users)
        return np.where(
            rng.random(n) < PRIMARY_DEVICE_STICKINESS,
            self.primary_device[users],
            rng.integers(0, len(DEVICES), n),
        ).astype(np.int8)

    def select_candidates(
        self,
        user_ids: np.ndarray,
        request_us: np.ndarray,
        n_candidates: int,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates per request: recent in-network tweets, then out-of-network ones.

        In-network: the most recent tweets (last 48 h, created before the request) of authors
        the user follows, up to half the budget. Out-of-network: the rest of the budget,
        sampled (Gumbel top-k) by author popularity and the user's topic interest.

        Args:
            user_ids: the requesting user of each request.
            request_us: request times, microseconds since the epoch.
            n_candidates: the candidate budget per request.
            rng: generator for the out-of-network sample.

        Returns:
            (request_row, tweet_index) flat arrays; ``tweet_index`` indexes ``self.tweets``.
        """
        users = np.asarray(user_ids, dtype=np.int64)
        t_us = np.asarray(request_us, dtype=np.int64)
        if len(users) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        store = self.tweets
        window_us = CANDIDATE_WINDOW_S * 1_000_000
        lo = int(np.searchsorted(store.created_us, t_us.min() - window_us, side="left"))
        hi = int(np.searchsorted(store.created_us, t_us.max(), side="left"))
        pool = np.arange(lo, hi)
        if len(pool) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        created = store.created_us[pool]
        pool_author = self.author_index[store.author_id[pool]]
        log_pop = np.log(self.author_popularity[pool_author])
        pool_topic = store.topic[pool]
        k_in = int(n_candidates * IN_NETWORK_SHARE)
        rows_out: list[np.ndarray] = []
        tweets_out: list[np.ndarray] = []
        rows_per_chunk = max(1, MAX_BATCH_CELLS // len(pool))
        for start in range(0, len(users), rows_per_chunk):
            stop = min(start + rows_per_chunk, len(users))
            u, t = users[start:stop], t_us[start:stop]
            eligible = (created[None, :] < t[:, None]) & (
                created[None, :] >= t[:, None] - window_us
            )
            eligible &= store.author_id[pool][None, :] != u[:, None]
            innet = self.follows[u][:, pool_author] & eligible
            in_key = np.where(innet, created[None, :].astype(np.float64), -np.inf)
            in_cols = _top_k_columns(in_key, k_in)
            in_ok = np.take_along_axis(in_key, in_cols, axis=1) > -np.inf
            out_key = np.where(
                eligible & ~innet,
                log_pop[None, :]
                + self.interest[u][:, pool_topic]
                + rng.gumbel(size=eligible.shape),
                -np.inf,
            )
            out_cols = _top_k_columns(out_key, n_candidates)
            out_ok = np.take_along_axis(out_key, out_cols, axis=1) > -np.inf
            out_ok &= np.arange(out_cols.shape[1])[None, :] < (n_candidates - in_ok.sum(1))[:, None]
            cols = np.concatenate([in_cols, out_cols], axis=1)
            ok = np.concatenate([in_ok, out_ok], axis=1)
            row = np.broadcast_to(np.arange(start, stop)[:, None], cols.shape)
            rows_out.append(row[ok])
            tweets_out.append(pool[cols[ok]])
        return np.concatenate(rows_out), np.concatenate(tweets_out)

    def inputs_from_attributes(
        self,
        user_ids: np.ndarray,
        author_ids: np.ndarray,
        topics: np.ndarray,
        has_media: np.ndarray,
        has_link: np.ndarray,
        tweet_created_ts_s: np.ndarray,
        request_ts_s: np.ndarray,
        device_codes: np.ndarray,
        positions: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The latent inputs of the engagement formula for arbitrary (user, tweet) rows.

        Use this when the tweet attributes come from elsewhere (e.g. the feature store);
        :meth:`true_probabilities` looks them up in the world's own tweets.
        """
        users = np.asarray(user_ids, dtype=np.int64)
        authors = np.asarray(author_ids, dtype=np.int64)
        if len(users) and (users.min() < 0 or users.max() >= self.n_users):
            raise ValueError(f"user ids must be in [0, {self.n_users})")
        a_idx = self.author_index[authors] if len(authors) else authors
        if len(a_idx) and a_idx.min() < 0:
            raise ValueError("author id(s) that are not authors of this world")
        request_ts = np.asarray(request_ts_s, dtype=np.float64)
        # Weekend, holiday proximity and tweet age are the same quantities serving computes.
        ctx = context_features(request_ts, device_codes, tweet_created_ts_s, np.zeros(len(users)))
        hour = np.mod(request_ts, float(SECONDS_PER_DAY)) / 3600.0
        return {
            "interest": self.interest[users, np.asarray(topics, dtype=np.int64)],
            "affinity": self.affinity(users, authors),
            "follows": self.follows[users, a_idx].astype(np.float64),
            "author_quality": self.author_quality[a_idx],
            "has_media": np.asarray(has_media, dtype=np.float64),
            "has_link": np.asarray(has_link, dtype=np.float64),
            "tweet_age_hours": np.maximum(ctx["ctx_tweet_age_hours"], 0.0),
            "position": np.asarray(positions, dtype=np.float64),
            "hours_from_peak": _circular_hours(hour, self.peak_hour_utc[users]),
            "is_weekend": ctx["ctx_is_weekend"],
            "days_to_holiday": ctx["ctx_days_to_holiday"],
            "device_code": np.asarray(device_codes, dtype=np.int64),
        }

    def latent_inputs(
        self,
        user_ids: np.ndarray,
        tweet_ids: np.ndarray,
        request_ts_s: np.ndarray,
        device_codes: np.ndarray,
        positions: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Latent inputs for (user, known tweet) rows; see :meth:`inputs_from_attributes`."""
        idx = self.tweets.index_of(tweet_ids)
        store = self.tweets
        return self.inputs_from_attributes(
            user_ids,
            store.author_id[idx],
            store.topic[idx],
            store.has_media[idx],
            store.has_link[idx],
            store.created_us[idx] / 1e6,
            request_ts_s,
            device_codes,
            positions,
        )

    def true_probabilities(
        self,
        user_ids: np.ndarray,
        tweet_ids: np.ndarray,
        request_ts_s: np.ndarray,
        device_codes: np.ndarray,
        positions: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The ground-truth probability of every head for each (user, tweet, context) row.

        Args:
            user_ids: readers.
            tweet_ids: tweets the world knows (``ValueError`` otherwise).
            request_ts_s: request times, seconds since the epoch (UTC).
            device_codes: indices into ``feedrank.schemas.DEVICES``.
            positions: 0-based positions in the served feed.

        Returns:
            ``{head: float64 array}`` for every head.
        """
        return true_probabilities(
            self.latent_inputs(user_ids, tweet_ids, request_ts_s, device_codes, positions)
        )


def _top_k_columns(keys: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` largest keys, largest first."""
    k = min(k, keys.shape[1])
    if k == 0:
        return np.empty((keys.shape[0], 0), np.int64)
    if k < keys.shape[1]:
        part = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(keys.shape[1]), keys.shape).copy()
    order = np.argsort(-np.take_along_axis(keys, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
