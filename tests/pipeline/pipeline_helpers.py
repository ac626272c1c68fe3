"""Shared constants and helpers of the batch-pipeline tests (a unique module name, so it
does not collide with the other test folders' ``conftest`` modules)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads

from feedrank.config import Settings

START = dt.date(2026, 11, 1)
END = dt.date(2026, 11, 3)
FEATURE_START = START - dt.timedelta(days=3)
EDGE_SERVED_AT = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)  # exactly a snapshot boundary


def settings_at(settings: Settings, home: Path) -> Settings:
    """``settings`` with its run folder moved to ``home``."""
    return settings.model_copy(update={"paths": settings.paths.model_copy(update={"home": home})})


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a Parquet dataset (hive partitions become columns) as dicts."""
    return pads.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pylist()


def add_edge_cases(world: dict[str, list[dict]]) -> None:
    """Rows on the boundaries the join must get exactly right.

    One request served exactly at 2026-11-02 00:00 (the moment the 11-01 snapshot becomes
    valid) with a like exactly at the end of the attribution window (counts) and a reply one
    microsecond later (does not count).
    """
    user = world["users"][0]["user_id"]
    pool = [t for t in world["tweets"] if t["created_at"] < EDGE_SERVED_AT][-2:]
    world["feed_requests"].append(
        {
            "schema_version": 1,
            "request_id": "edge-midnight",
            "user_id": user,
            "requested_at": EDGE_SERVED_AT - dt.timedelta(milliseconds=100),
            "device": "tablet",
            "candidate_tweet_ids": [t["tweet_id"] for t in pool],
        }
    )
    for position, tweet in enumerate(pool):
        world["impressions"].append(
            {
                "schema_version": 1,
                "request_id": "edge-midnight",
                "user_id": user,
                "tweet_id": tweet["tweet_id"],
                "author_id": tweet["author_id"],
                "position": position,
                "served_at": EDGE_SERVED_AT,
                "model_version": "chronological",
                "arm": "control",
                "score": None,
                "features": None,
            }
        )
    tweet = pool[0]
    for head, delay in (
        ("like", dt.timedelta(hours=1)),
        ("reply", dt.timedelta(hours=1, microseconds=1)),
    ):
        world["engagements"].append(
            {
                "schema_version": 1,
                "request_id": "edge-midnight",
                "user_id": user,
                "tweet_id": tweet["tweet_id"],
                "author_id": tweet["author_id"],
                "head": head,
                "engaged_at": EDGE_SERVED_AT + delay,
            }
        )


@dataclass
class PipelineRun:
    settings: Settings
    world: dict[str, list[dict]]
    run_dir: Path
