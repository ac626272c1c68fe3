"""Spec-generated feature tables and a store over them: for the serving and hydration
benchmarks and the tests, where the Spark jobs' output is absent."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from feedrank import feature_spec as spec
from feedrank.config import Settings
from feedrank.featurestore import CREATED_FIELD, TIMESTAMP_FIELD, apply_repo, materialize


def build_synthetic_store(
    settings: Settings, *, start: dt.date, users: int, authors: int, tweets: int, seed: int = 1
) -> dt.datetime:
    """A ready online store over spec-generated tables (benchmarks and serving tests).

    Two days of tables from ``start``, applied and materialized (stream views included) up to
    one hour past their last day, over a window wider than every view's TTL.

    Returns:
        The moment the store was materialized to.
    """
    days = 2
    write_synthetic_feature_tables(
        settings.paths.features,
        start=start,
        days=days,
        users=users,
        authors=authors,
        tweets=tweets,
        seed=seed,
    )
    apply_repo(settings)
    end = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC) + dt.timedelta(days=days, hours=1)
    materialize(settings, start=end - dt.timedelta(days=70), end=end, include_stream_views=True)
    return end


def write_synthetic_feature_tables(
    root: Path,
    *,
    start: dt.date,
    days: int = 3,
    users: int = 200,
    authors: int = 40,
    tweets: int = 2_000,
    topics: int = 12,
    stream_step_minutes: int = 30,
    seed: int = 0,
) -> dict[str, int]:
    """Write every view's Parquet table under ``root/<view>/``, generated from the spec.

    Used by tests and by ``feedrank bench hydration`` where the Spark jobs' output is absent.
    Tables follow the feature-table contract: join keys, ``event_timestamp`` and
    ``created_timestamp`` (``timestamp[us, UTC]``) and the view's features with their dtypes.
    Daily views carry one snapshot per day (event time = next midnight) for a random ~90% of
    their entities; event views one row per tweet at its creation; stream views intraday
    counters every ``stream_step_minutes``. About 5% of float values are NaN. Ids start at 0.

    Returns:
        Rows written per view.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    day0 = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC).timestamp()
    span_s = days * 86400.0
    tweet_created = np.sort(rng.uniform(day0 - 86400.0, day0 + span_s, tweets)).round(3)
    tweet_author = rng.integers(0, authors, tweets)
    tweet_topic = rng.integers(0, topics, tweets)
    pairs_ua = rng.choice(users * authors, size=min(users * authors, users * 10), replace=False)
    pairs_ut = rng.choice(users * topics, size=min(users * topics, users * 4), replace=False)
    keys_of = {
        "user": {"user_id": np.arange(users)},
        "author": {"author_id": np.arange(authors)},
        "tweet": {"tweet_id": np.arange(tweets)},
        "user_author": {"user_id": pairs_ua // authors, "author_id": pairs_ua % authors},
        "user_topic": {"user_id": pairs_ut // topics, "topic": pairs_ut % topics},
    }
    semantic = {
        "tweet_created_ts": lambda idx: tweet_created[idx],
        "tweet_topic": lambda idx: tweet_topic[idx],
        "tweet_author_id": lambda idx: tweet_author[idx],
        "user_active_hour_peak": lambda idx: rng.integers(-1, 24, len(idx)),
    }

    def values(feature: spec.Feature, entity_idx: np.ndarray) -> np.ndarray:
        if feature.name in semantic:
            return np.asarray(semantic[feature.name](entity_idx))
        if feature.dtype == "int64":
            return rng.integers(0, 500, len(entity_idx))
        out = rng.uniform(0, 1, len(entity_idx))
        out[rng.uniform(size=len(entity_idx)) < 0.05] = np.nan
        return out

    written: dict[str, int] = {}
    for view in spec.VIEWS.values():
        keys = keys_of[view.entity]
        n_entities = len(next(iter(keys.values())))
        batches: list[tuple[np.ndarray, np.ndarray]] = []  # (entity index, event epoch s)
        if view.kind == "event":
            idx = np.arange(n_entities)
            batches.append((idx, tweet_created[idx]))
        elif view.kind == "daily":
            for day in range(days):
                snapshot = day0 + (day + 1) * 86400.0
                idx = np.flatnonzero(rng.uniform(size=n_entities) < 0.9)
                if view.entity == "tweet":
                    idx = idx[tweet_created[idx] < snapshot]
                batches.append((idx, np.full(len(idx), snapshot)))
        else:
            step = stream_step_minutes * 60.0
            for tick in np.arange(day0 + step, day0 + span_s + step / 2, step):
                idx = np.flatnonzero(rng.uniform(size=n_entities) < 0.05)
                if view.entity == "tweet":
                    idx = idx[tweet_created[idx] < tick]
                batches.append((idx, np.full(len(idx), tick)))
        folder = root / view.name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.parquet"):
            old.unlink()
        total = 0
        for part, (idx, event_s) in enumerate(batches):
            if len(idx) == 0:
                continue
            event_us = (event_s * 1e6).astype("int64")
            columns: dict[str, pa.Array] = {
                k: pa.array(v[idx].astype("int64")) for k, v in keys.items()
            }
            columns[TIMESTAMP_FIELD] = pa.array(event_us, pa.timestamp("us", tz="UTC"))
            columns[CREATED_FIELD] = pa.array(event_us + 1_000_000, pa.timestamp("us", tz="UTC"))
            for feature in view.features:
                data = values(feature, idx).astype(feature.dtype)
                columns[feature.name] = pa.array(data, from_pandas=False)
            pq.write_table(pa.table(columns), folder / f"part-{part:05d}.parquet")
            total += len(idx)
        written[view.name] = total
    return written
