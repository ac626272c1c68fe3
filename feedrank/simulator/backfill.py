"""Batch backfill: days of the old chronological system's logs as Hive-partitioned Parquet.

Long because: a simulated day's stages (tweets, requests, impressions, engagements, follows)
share the world's state.

Layout: ``<out>/<table>/date=YYYY-MM-DD/part-0.parquet`` for every table of
``feedrank.schemas.LAKE_TABLES``, each written with ``table_schema(table)`` (microsecond UTC
timestamps) and partitioned by the table's ``EVENT_TIME`` column. ``<out>/_manifest.json``
records the seed, sizes, row counts and per-head rates.

The world's day before ``start_date`` holds the initial state: user sign-ups, the initial
follow graph and a day of tweets, so the first requests already have candidates. Each
simulated day then posts tweets, serves feed requests (candidates → chronological order with
a little noise → the positions the user scrolls to become impressions), draws engagements
from the ground truth, and adds a few follows that take effect the next day.

Same seed → byte-identical files: every random draw comes from a generator keyed by (seed,
stage, day, hour), rows have a fixed order and nothing reads the wall clock. So a world can be
extended by later days (:func:`extend_or_start`): the days already in the lake are replayed
for the world's state only (tweets and follows, not the feeds), and only the new days are
served and written, with the same bytes a longer backfill would have written for them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from feedrank.config import HEADS, Settings, SimulatorConfig
from feedrank.lake import mark_landed_through, midnight, write_partitioned
from feedrank.logs import progress_bar
from feedrank.schemas import DEVICES, EVENT_TIME, LAKE_TABLES, table_schema
from feedrank.simulator.engagement import draw_delays_s, draw_engagements, true_probabilities
from feedrank.simulator.world import (
    SECONDS_PER_DAY,
    TWEET_ID_BASE,
    World,
    stage_rng,
)

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger("feedrank.simulator.backfill")

US_PER_DAY = SECONDS_PER_DAY * 1_000_000
US_PER_HOUR = 3600 * 1_000_000
CHRONO_NOISE_S = 1800.0  # sd of the old system's ordering noise around creation time
NEW_FOLLOWS_PER_USER_PER_DAY = 0.02
MODEL_VERSION_CHRONO = "chronological"
MANIFEST = "_manifest.json"
# Random-stream identifiers: one independent stream per stage (see world.stage_rng). A day's
# streams are keyed by its calendar day (:func:`calendar_key`), not by its index in the
# world: with index keys every fresh world drew the same outcomes on its n-th day whatever
# the date, so every `make demo` held out the same draw (docs/quality.md, "The oracle's gap").
_STAGE_TWEETS, _STAGE_REQUESTS, _STAGE_CANDIDATES, _STAGE_ENGAGE, _STAGE_FOLLOWS = 2, 3, 4, 5, 6
_STAGE_SIGNUPS = 7


def calendar_key(day_start_us: int) -> int:
    """The random-stream key of the day starting at ``day_start_us``: days since 1970-01-01."""
    return int(day_start_us // US_PER_DAY)


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64), type=pa.timestamp("us", tz="UTC"))


def _table(name: str, columns: dict[str, Any]) -> pa.Table:
    schema = table_schema(name)
    missing = set(schema.names) ^ set(columns)
    if missing:
        raise ValueError(f"{name}: columns do not match the schema: {sorted(missing)}")
    arrays = [
        pa.array(columns[f.name], type=f.type)
        if not isinstance(columns[f.name], pa.Array)
        else columns[f.name].cast(f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _date_of_us(us: np.ndarray) -> np.ndarray:
    return np.floor_divide(us, US_PER_DAY)


def _day_tweets(world: World, day_start_us: int, first_id: int, rng: np.random.Generator) -> dict:
    counts = rng.poisson(world.author_tweets_per_day)
    author_idx = np.repeat(np.arange(world.n_authors), counts)
    peaks = world.peak_hour_utc[world.author_ids[author_idx]]
    offsets_us = (world.active_hour_offsets_s(peaks, rng) * 1e6).astype(np.int64)
    order = np.lexsort((author_idx, offsets_us))
    created = day_start_us + offsets_us[order]
    return world.tweet_attributes(author_idx[order], created, first_id, rng)


def _day_requests(
    world: World, day_start_us: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = rng.poisson(world.requests_per_day)
    users = np.repeat(np.arange(world.n_users, dtype=np.int64), counts)
    offsets_us = (world.active_hour_offsets_s(world.peak_hour_utc[users], rng) * 1e6).astype(
        np.int64
    )
    devices = world.request_devices(users, rng)
    order = np.lexsort((users, offsets_us))
    return users[order], day_start_us + offsets_us[order], devices[order]


class _Tables:
    """Per-table column chunks accumulated in generation order."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[pa.Table]] = {name: [] for name in LAKE_TABLES}

    def add(self, name: str, columns: dict[str, Any]) -> None:
        self.chunks[name].append(_table(name, columns))

    def get(self, name: str) -> pa.Table:
        parts = self.chunks[name]
        return pa.concat_tables(parts) if parts else table_schema(name).empty_table()


def _serve_day(
    world: World,
    day_start_us: int,
    n_candidates: int,
    tables: _Tables,
    progress: tqdm,
) -> None:
    """Feed requests, impressions, oracle and engagements of one simulated day."""
    seed = world.seed
    key = calendar_key(day_start_us)
    users, request_us, devices = _day_requests(
        world, day_start_us, stage_rng(seed, _STAGE_REQUESTS, key)
    )
    date_tag = (dt.date(1970, 1, 1) + dt.timedelta(days=day_start_us // US_PER_DAY)).strftime(
        "%Y%m%d"
    )
    request_ids = pa.array([f"bf{seed}-{date_tag}-{i:06d}" for i in range(len(users))], pa.string())
    hour_of = (request_us - day_start_us) // US_PER_HOUR
    req_rows, cand_idx = [], []
    for hour in range(24):
        sel = np.flatnonzero(hour_of == hour)
        rng = stage_rng(seed, _STAGE_CANDIDATES, key, hour)
        rows, tweets = world.select_candidates(users[sel], request_us[sel], n_candidates, rng)
        req_rows.append(sel[rows])
        cand_idx.append(tweets)
        progress.update(1)
    rows = np.concatenate(req_rows)
    tweet_idx = np.concatenate(cand_idx)
    store = world.tweets
    rng = stage_rng(seed, _STAGE_ENGAGE, key)

    # Feed requests: candidates in ascending tweet id (the request does not imply an order).
    # rows are ascending already; one int64 argsort on (row, tweet) beats np.lexsort by ~10x.
    by_id = np.argsort((rows << 32) + tweet_idx, kind="stable")
    n_per_request = np.bincount(rows, minlength=len(users))
    has_candidates = n_per_request > 0
    offsets = np.concatenate([[0], np.cumsum(n_per_request[has_candidates])]).astype(np.int32)
    candidate_lists = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(store.tweet_id[tweet_idx[by_id]], pa.int64())
    )
    kept = np.flatnonzero(has_candidates)
    tables.add(
        "feed_requests",
        {
            "schema_version": np.ones(len(kept), np.int64),
            "request_id": request_ids.take(pa.array(kept)),
            "user_id": users[kept],
            "requested_at": _ts(request_us[kept]),
            "device": np.asarray(DEVICES, dtype=object)[devices[kept]],
            "candidate_tweet_ids": candidate_lists,
        },
    )

    # The old system: newest first, jittered so logged order is not fully confounded.
    jitter_s = store.created_us[tweet_idx] / 1e6 + rng.normal(0.0, CHRONO_NOISE_S, len(rows))
    newest_first_ms = np.round((jitter_s.max() - jitter_s) * 1e3).astype(np.int64)
    shown = np.argsort((rows << 36) + newest_first_ms, kind="stable")
    rows, tweet_idx = rows[shown], tweet_idx[shown]
    first_of_row = np.concatenate([[0], np.cumsum(n_per_request)])[:-1]
    position = np.arange(len(rows)) - first_of_row[rows]
    depth = rng.geometric(np.minimum(1.0 / world.view_depth_mean[users], 1.0))
    viewed = position < depth[rows]
    rows, tweet_idx, position = rows[viewed], tweet_idx[viewed], position[viewed]

    imp_users = users[rows]
    served_us = request_us[rows]
    tweet_ids = store.tweet_id[tweet_idx]
    author_ids = store.author_id[tweet_idx]
    imp_request_ids = request_ids.take(pa.array(rows))
    n_imp = len(rows)
    tables.add(
        "impressions",
        {
            "schema_version": np.ones(n_imp, np.int64),
            "request_id": imp_request_ids,
            "user_id": imp_users,
            "tweet_id": tweet_ids,
            "author_id": author_ids,
            "position": position.astype(np.int32),
            "served_at": _ts(served_us),
            "model_version": pa.repeat(pa.scalar(MODEL_VERSION_CHRONO), n_imp),
            "arm": pa.repeat(pa.scalar("control"), n_imp),
            "score": pa.nulls(n_imp, pa.float64()),
            "features": pa.nulls(n_imp, pa.list_(pa.float64())),
        },
    )
    probs = true_probabilities(
        world.inputs_from_attributes(
            imp_users,
            author_ids,
            store.topic[tweet_idx],
            store.has_media[tweet_idx],
            store.has_link[tweet_idx],
            store.created_us[tweet_idx] / 1e6,
            served_us / 1e6,
            devices[rows],
            position,
        )
    )
    tables.add(
        "oracle",
        {
            "schema_version": np.ones(n_imp, np.int64),
            "request_id": imp_request_ids,
            "user_id": imp_users,
            "tweet_id": tweet_ids,
            "served_at": _ts(served_us),
            **{f"p_{h}": probs[h] for h in HEADS},
        },
    )
    drawn = draw_engagements(probs, rng)
    eng_imp = [np.flatnonzero(drawn[h]) for h in HEADS]
    eng_head = np.concatenate([np.full(len(ix), k, np.int8) for k, ix in enumerate(eng_imp)])
    eng_delay_us = np.concatenate(
        [
            (draw_delays_s(h, len(ix), rng) * 1e6).astype(np.int64)
            for h, ix in zip(HEADS, eng_imp, strict=True)
        ]
    )
    eng_imp_all = np.concatenate(eng_imp)
    order = np.lexsort((eng_head, eng_imp_all))
    eng_imp_all, eng_head, eng_delay_us = eng_imp_all[order], eng_head[order], eng_delay_us[order]
    tables.add(
        "engagements",
        {
            "schema_version": np.ones(len(eng_imp_all), np.int64),
            "request_id": imp_request_ids.take(pa.array(eng_imp_all)),
            "user_id": imp_users[eng_imp_all],
            "tweet_id": tweet_ids[eng_imp_all],
            "author_id": author_ids[eng_imp_all],
            "head": np.asarray(HEADS, dtype=object)[eng_head],
            "engaged_at": _ts(served_us[eng_imp_all] + eng_delay_us),
        },
    )


def _add_tweets(world: World, tables: _Tables, day_start_us: int) -> None:
    first_id = int(world.tweets.tweet_id[-1]) + 1 if len(world.tweets) else TWEET_ID_BASE
    batch = _day_tweets(
        world,
        day_start_us,
        first_id,
        stage_rng(world.seed, _STAGE_TWEETS, calendar_key(day_start_us)),
    )
    world.tweets.append(batch)
    n = len(batch["tweet_id"])
    tables.add(
        "tweets",
        {
            "schema_version": np.ones(n, np.int64),
            **{k: v for k, v in batch.items() if k != "created_us"},
            "created_at": _ts(batch["created_us"]),
        },
    )


def _add_follows(
    tables: _Tables, followers: np.ndarray, followees: np.ndarray, created_us: np.ndarray
) -> None:
    order = np.lexsort((followees, followers, created_us))
    tables.add(
        "follows",
        {
            "schema_version": np.ones(len(order), np.int64),
            "follower_id": followers[order],
            "followee_id": followees[order],
            "created_at": _ts(created_us[order]),
        },
    )


def simulate_backfill(
    settings: Settings,
    out_dir: Path,
    days: int | None = None,
    seed: int | None = None,
    users: int | None = None,
    candidates: int | None = None,
    start_date: str | None = None,
    progress: bool = True,
    write_from: str | None = None,
) -> dict[str, Any]:
    """Simulate days of the old system and write every lake table under ``out_dir``.

    Args:
        settings: resolved settings; ``settings.simulator`` gives the defaults.
        out_dir: lake root; the partitions of the simulated days are replaced, others kept.
        days: simulated days (default ``simulator.days``).
        seed: world and draw seed (default ``simulator.seed``).
        users: number of users (default ``simulator.users``).
        candidates: candidates per request (default ``simulator.candidates_per_request``).
        start_date: first simulated day, ``YYYY-MM-DD`` (default ``simulator.start_date``).
        progress: show a progress bar.
        write_from: first day to serve and write, ``YYYY-MM-DD``; earlier days (and the
            initial state) are only replayed to bring the world's tweets and follows up to
            date (default: write every day).

    Returns:
        Summary: seed, dates, rows per table, per-head positive rate per impression, seconds
        and generation speed.
    """
    updates = {
        k: v
        for k, v in {
            "days": days,
            "seed": seed,
            "users": users,
            "candidates_per_request": candidates,
            "start_date": start_date,
        }.items()
        if v is not None
    }
    cfg = SimulatorConfig.model_validate({**settings.simulator.model_dump(), **updates})
    started = time.perf_counter()
    cpu_started = time.process_time()
    world = World.build(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = _Tables()
    day0_us = world.start_us - US_PER_DAY
    first_written = (
        0
        if write_from is None
        else max(0, (dt.date.fromisoformat(write_from) - world.start_date).days + 1)
    )
    signup_rng = stage_rng(cfg.seed, _STAGE_SIGNUPS)
    tables.add(
        "users",
        {
            "schema_version": np.ones(world.n_users, np.int64),
            "user_id": np.arange(world.n_users, dtype=np.int64),
            "created_at": _ts(world.created_us),
            "tz_offset_hours": world.tz_offset_hours,
            "primary_device": np.asarray(DEVICES, dtype=object)[world.primary_device],
            "is_author": world.is_author,
        },
    )
    followers, followees = world.follow_pairs()
    _add_follows(
        tables, followers, followees, day0_us + signup_rng.integers(0, US_PER_DAY, len(followers))
    )
    _add_tweets(world, tables, day0_us)
    # The day before the first written one is served again, not written: its late
    # engagements belong to the first written day's partition.
    first_served = max(first_written - 1, 1)
    total_h = (cfg.days + 1 - first_served) * 24
    with progress_bar(total=total_h, desc="simulate", unit="h", enabled=progress) as bar:
        for day in range(1, cfg.days + 1):
            if day == first_served and first_written > 1:
                tables = _Tables()  # what came before is state only, already in the lake
            day_start_us = day0_us + day * US_PER_DAY
            _add_tweets(world, tables, day_start_us)
            if day >= first_served:
                # Serving a day reads the world and draws from the day's own streams only,
                # so skipping it for a replayed day leaves later days unchanged.
                _serve_day(world, day_start_us, cfg.candidates_per_request, tables, bar)
            follow_rng = stage_rng(cfg.seed, _STAGE_FOLLOWS, calendar_key(day_start_us))
            n_new = follow_rng.poisson(NEW_FOLLOWS_PER_USER_PER_DAY * world.n_users)
            new_from, new_to = world.new_follows(n_new, follow_rng)
            _add_follows(
                tables,
                new_from,
                new_to,
                day_start_us + follow_rng.integers(0, US_PER_DAY, len(new_from)),
            )
    generated_s = time.perf_counter() - started
    rows: dict[str, int] = {}
    write_from_us = day0_us + max(first_written, 1) * US_PER_DAY if first_written > 1 else None
    for name in LAKE_TABLES:
        table = tables.get(name)
        if write_from_us is not None:
            event_us = table.column(EVENT_TIME[name]).cast(pa.int64()).to_numpy()
            table = table.filter(pa.array(event_us >= write_from_us))
        rows[name] = table.num_rows
        if not table.num_rows:
            continue  # e.g. users when extending: the lake's partitions stay as they are
        write_partitioned(name, table, out_dir, others_expected=write_from_us is not None)
    heads = tables.get("engagements").column("head").to_numpy(zero_copy_only=False)
    n_imp = max(rows["impressions"], 1)
    rates = {h: float(np.count_nonzero(heads == h)) / n_imp for h in HEADS}
    first = world.start_date
    manifest = {
        "seed": cfg.seed,
        "start_date": first.isoformat(),
        "end_date": (first + dt.timedelta(days=cfg.days - 1)).isoformat(),
        "days": cfg.days,
        "users": cfg.users,
        "authors": world.n_authors,
        "candidates_per_request": cfg.candidates_per_request,
        "world": world_key(cfg),
        "written_from": (first + dt.timedelta(days=max(first_written, 1) - 1)).isoformat(),
        "rows": rows,
        "engagements_per_impression": rates,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    mark_world_landed(out_dir, dt.date.fromisoformat(manifest["end_date"]))
    total_s = time.perf_counter() - started
    summary = {
        **manifest,
        "out_dir": str(out_dir),
        "generate_s": round(generated_s, 3),
        "total_s": round(total_s, 3),
        # CPU time of this process: on a busy shared machine it says more than wall time.
        "cpu_s": round(time.process_time() - cpu_started, 3),
        "impressions_per_s": rows["impressions"] / total_s,
        "rows_per_s": sum(rows.values()) / total_s,
    }
    log.info("backfill done: %s", json.dumps(summary, sort_keys=True))
    return summary


def mark_world_landed(out_dir: Path, end_date: dt.date) -> None:
    """Every lake table of a simulated world is complete to the midnight after its last day."""
    for name in LAKE_TABLES:
        mark_landed_through(out_dir, name, midnight(end_date + dt.timedelta(days=1)), "backfill")


def world_key(cfg: SimulatorConfig) -> dict[str, Any]:
    """The settings that shape the world and its days (not which days are simulated)."""
    return cfg.model_dump(exclude={"days", "start_date", "serving_candidates", "live_rate_rps"})


def extend_or_start(
    settings: Settings, out_dir: Path, end_date: dt.date, days: int, progress: bool = True
) -> tuple[str, dict[str, Any]]:
    """Make the lake's simulated world cover ``days`` days ending with ``end_date``.

    The world of the lake's manifest is reused when it is the same world (seed and sizes of
    ``settings.simulator``) and started early enough: it is extended by the missing days
    only (same bytes as a fresh backfill of the whole span), or left as it is when it
    already ends with ``end_date``. Otherwise (no lake, another world, or a lake that ends
    after ``end_date``, which would put tomorrow's data beside today's run) the lake is
    deleted and a new world of ``days`` days is simulated.

    Returns:
        ``"new"``, ``"extended"`` or ``"unchanged"``, and the backfill summary (the manifest
        when unchanged) whose ``plan`` says in one line what was done and why.
    """
    cfg = settings.simulator
    first_needed = end_date - dt.timedelta(days=days - 1)
    path = Path(out_dir) / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else None
    why_new = "no simulated world in the lake yet"
    if manifest is not None:
        start = dt.date.fromisoformat(manifest["start_date"])
        end = dt.date.fromisoformat(manifest["end_date"])
        if manifest.get("world") != world_key(cfg):
            why_new = "the lake holds another world (seed or sizes differ)"
        elif start > first_needed:
            why_new = f"the lake's world starts on {start}, after {first_needed}"
        elif end > end_date:
            why_new = f"the lake's world already runs to {end}, after {end_date}"
        elif end == end_date:
            mark_world_landed(Path(out_dir), end)  # a lake written before the marks existed
            return "unchanged", {
                **manifest,
                "plan": f"reusing the simulated world {start} … {end} (nothing to add)",
            }
        else:
            summary = simulate_backfill(
                settings,
                out_dir,
                days=(end_date - start).days + 1,
                start_date=start.isoformat(),
                write_from=(end + dt.timedelta(days=1)).isoformat(),
                progress=progress,
            )
            added = (end_date - end).days
            plan = (
                f"extending the simulated world {start} … {end} by {added} day(s) to "
                f"{end_date} (same seed {cfg.seed}; only the new days simulated)"
            )
            return "extended", {**summary, "plan": plan}
    if Path(out_dir).exists():
        shutil.rmtree(out_dir)
    summary = simulate_backfill(
        settings, out_dir, days=days, start_date=first_needed.isoformat(), progress=progress
    )
    plan = f"starting a new simulated world {first_needed} … {end_date} ({why_new})"
    return "new", {**summary, "plan": plan}
