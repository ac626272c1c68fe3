"""Small, coherent lake worlds generated from the event schemas (test support).

Every table is built as rows of its pydantic model's fields and written with
:func:`feedrank.schemas.table_schema`, so the fixtures cannot drift from the contract. The
world is deliberately simple (the real one is :mod:`feedrank.simulator`): authors post,
users follow authors, request feeds of recent tweets, see every candidate and engage with
fixed per-head probabilities after an exponential delay — some beyond the attribution
window, so label attribution has edges to get right.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feedrank.config import HEADS
from feedrank.schemas import DEVICES, EVENT_TIME, LAKE_TABLES, table_schema

HEAD_RATES: dict[str, float] = {
    "like": 0.15,
    "reply": 0.03,
    "retweet": 0.05,
    "click": 0.1,
    "negative": 0.02,
}
ENGAGEMENT_DELAY_MEAN_S = 1500.0


def write_lake_rows(out_dir: Path, table: str, rows: list[dict]) -> dict[str, int]:
    """Write rows of ``table`` into ``<out>/<table>/date=…/part-00000.parquet`` by event date.

    Args:
        out_dir: the lake root.
        table: a lake table name (``feedrank.schemas.LAKE_TABLES``).
        rows: dicts with exactly the table's fields (timestamps as aware datetimes).

    Returns:
        Rows written per partition date.
    """
    schema = table_schema(table)
    by_day: dict[dt.date, list[dict]] = defaultdict(list)
    for row in rows:
        by_day[row[EVENT_TIME[table]].date()].append(row)
    counts = {}
    for day, day_rows in sorted(by_day.items()):
        folder = Path(out_dir) / table / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(day_rows, schema=schema), folder / "part-00000.parquet")
        counts[day.isoformat()] = len(day_rows)
    return counts


def _ts(base: dt.datetime, seconds: float) -> dt.datetime:
    # Whole microseconds: the lake's resolution.
    return base + dt.timedelta(microseconds=round(seconds * 1e6))


def generate_world(
    start: dt.date,
    days: int,
    users: int = 40,
    seed: int = 0,
    requests_per_user_day: float = 2.0,
    candidates: int = 6,
    topics: int = 5,
    head_rates: dict[str, float] | None = None,
) -> dict[str, list[dict]]:
    """Rows of every lake table for a tiny world of ``days`` days starting at ``start``.

    Returns:
        Table name -> list of row dicts (schema field names).
    """
    rng = np.random.default_rng(seed)
    rates = head_rates or HEAD_RATES
    t0 = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
    span_s = days * 86400.0
    user_ids = [1000 + i for i in range(users)]
    is_author = {u: bool(rng.random() < 0.35) or i < 3 for i, u in enumerate(user_ids)}
    authors = [u for u in user_ids if is_author[u]]
    world: dict[str, list[dict]] = {t: [] for t in LAKE_TABLES}
    for u in user_ids:
        world["users"].append(
            {
                "schema_version": 1,
                "user_id": u,
                "created_at": _ts(t0, -float(rng.uniform(5, 30)) * 86400),
                "tz_offset_hours": int(rng.integers(-8, 10)),
                "primary_device": DEVICES[int(rng.integers(len(DEVICES)))],
                "is_author": is_author[u],
            }
        )
    tweet_id = 50_000
    tweets = []
    # Tweets start two days early so the first requests have candidates.
    for a in authors:
        n = int(rng.poisson(3.0 * (days + 2)))
        for t in np.sort(rng.uniform(-2 * 86400.0, span_s, n)):
            tweet_id += 1
            row = {
                "schema_version": 1,
                "tweet_id": tweet_id,
                "author_id": a,
                "created_at": _ts(t0, float(t)),
                "topic": int(rng.integers(topics)),
                "has_media": bool(rng.random() < 0.3),
                "has_link": bool(rng.random() < 0.2),
                "length": int(rng.integers(1, 281)),
                "language": "en",
            }
            tweets.append(row)
    tweets.sort(key=lambda r: r["created_at"])
    world["tweets"] = tweets
    followed: set[tuple[int, int]] = set()
    for u in user_ids:
        for a in rng.choice(authors, size=min(4, len(authors)), replace=False):
            if int(a) != u and (u, int(a)) not in followed:
                followed.add((u, int(a)))
                world["follows"].append(
                    {
                        "schema_version": 1,
                        "follower_id": u,
                        "followee_id": int(a),
                        "created_at": _ts(t0, float(rng.uniform(-3 * 86400.0, span_s))),
                    }
                )
    created = np.array([(r["created_at"] - t0).total_seconds() for r in tweets])
    request_no = 0
    for u in user_ids:
        n = int(rng.poisson(requests_per_user_day * days))
        for t in np.sort(rng.uniform(0, span_s, n)):
            pool = np.flatnonzero((created < t) & (created > t - 3 * 86400))
            if len(pool) == 0:
                continue
            request_no += 1
            chosen = rng.choice(pool, size=min(candidates, len(pool)), replace=False)
            request_id = f"r{seed}-{request_no:06d}"
            requested_at = _ts(t0, float(t))
            device = DEVICES[int(rng.integers(len(DEVICES)))]
            world["feed_requests"].append(
                {
                    "schema_version": 1,
                    "request_id": request_id,
                    "user_id": u,
                    "requested_at": requested_at,
                    "device": device,
                    "candidate_tweet_ids": [tweets[i]["tweet_id"] for i in chosen],
                }
            )
            served_at = _ts(requested_at, float(rng.uniform(0.05, 0.3)))
            for position, i in enumerate(chosen):
                tw = tweets[i]
                world["impressions"].append(
                    {
                        "schema_version": 1,
                        "request_id": request_id,
                        "user_id": u,
                        "tweet_id": tw["tweet_id"],
                        "author_id": tw["author_id"],
                        "position": position,
                        "served_at": served_at,
                        "model_version": "chronological",
                        "arm": "control",
                        "score": None,
                        "features": None,
                    }
                )
                probs = {h: rates[h] for h in HEADS}
                world["oracle"].append(
                    {
                        "schema_version": 1,
                        "request_id": request_id,
                        "user_id": u,
                        "tweet_id": tw["tweet_id"],
                        "served_at": served_at,
                        **{f"p_{h}": p for h, p in probs.items()},
                    }
                )
                for h in HEADS:
                    if rng.random() < probs[h]:
                        delay = float(rng.exponential(ENGAGEMENT_DELAY_MEAN_S))
                        world["engagements"].append(
                            {
                                "schema_version": 1,
                                "request_id": request_id,
                                "user_id": u,
                                "tweet_id": tw["tweet_id"],
                                "author_id": tw["author_id"],
                                "head": h,
                                "engaged_at": _ts(served_at, delay),
                            }
                        )
    return world


def write_world(out_dir: Path, world: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """Write every table of a generated world into the lake layout."""
    return {table: write_lake_rows(out_dir, table, rows) for table, rows in world.items()}
