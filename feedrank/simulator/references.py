"""Knowable references: what a perfect model could predict from the logs, not from the oracle.

The oracle knows each user×author ``affinity``, an independent draw per pair that no log
reveals before the pair has met. Two references sit between it and a model:

* ``no_pair`` — the true probability with the pair affinity at its prior mean (0): perfect
  knowledge of the user, author, topic and context, none of the pair's history.
* ``ceiling`` — the Bayes predictive probability given the logs: the true probability with
  the affinity integrated over its posterior given that pair's impressions and engagements
  logged before the impression, under the simulator's own prior ``N(0, AFFINITY_SD²)``.

Approximations (also in docs/simulator.md): the posterior is computed on a fixed grid of
affinity values; the heads of one impression are treated as independent given the affinity
(the simulator's shared per-impression "mood" is ignored); a past impression counts only once
its attribution window has closed (``served_at + window ≤ t``), so its labels are final — the
last window's impressions of the pair are left out rather than counted as negatives.

Point in time: the posterior of an impression served at ``t`` uses only rows of the same pair
served at or before ``t − window`` (strictly before ``t``), never the impression itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, log_expit, logit, logsumexp

from feedrank.config import HEADS, Settings, SimulatorConfig
from feedrank.errors import FeedrankError
from feedrank.lake import read_lake_table
from feedrank.simulator.backfill import MANIFEST, world_key
from feedrank.simulator.engagement import AFFINITY_WEIGHT, COEFFICIENTS
from feedrank.simulator.oracle import oracle_labels
from feedrank.simulator.world import AFFINITY_SD, World

REFERENCES: tuple[str, ...] = ("no_pair", "ceiling")
# 81 points over ±5 prior sd: a step of 1/8 sd, finer than the posterior sd a pair's
# history of a few dozen impressions can reach.
AFFINITY_GRID = np.linspace(-5.0, 5.0, 81) * AFFINITY_SD
_LOG_PRIOR = -0.5 * (AFFINITY_GRID / AFFINITY_SD) ** 2
_EPS = 1e-12


def affinity_loadings() -> dict[str, float]:
    """How much one unit of affinity moves each head's logit (``relevance_h · w_affinity``)."""
    return {h: COEFFICIENTS[h].relevance * AFFINITY_WEIGHT for h in HEADS}


@dataclass
class ReferenceRows:
    """Rows of impressions with everything the references need, in any order.

    Attributes:
        pair: one integer key per (user, author) pair.
        served_us: impression time, microseconds since the epoch.
        oracle: ``{head: true probability}``.
        affinity: the true affinity of the row's pair.
        labels: ``{head: 0/1}`` engagement within the attribution window.
    """

    pair: np.ndarray
    served_us: np.ndarray
    oracle: dict[str, np.ndarray]
    affinity: np.ndarray
    labels: dict[str, np.ndarray]


def pair_free_logits(oracle: dict[str, np.ndarray], affinity: np.ndarray) -> dict[str, np.ndarray]:
    """Each head's true logit with the pair's affinity term removed (affinity = prior mean)."""
    load = affinity_loadings()
    return {
        h: logit(np.clip(oracle[h], _EPS, 1 - _EPS)) - load[h] * np.asarray(affinity, np.float64)
        for h in HEADS
    }


def reference_probabilities(
    rows: ReferenceRows, window_us: int, query: np.ndarray | None = None
) -> dict[str, dict[str, np.ndarray] | np.ndarray]:
    """``no_pair`` and ``ceiling`` probabilities of the ``query`` rows.

    Args:
        rows: every logged impression that may serve as history (and the query rows).
        window_us: attribution window; a past row counts once ``served_us + window_us ≤ t``.
        query: indices into ``rows`` to score (default: all).

    Returns:
        ``{"no_pair": {head: p}, "ceiling": {head: p}, "history": n}`` for the query rows,
        ``history`` being how many past impressions of the pair the ceiling used.
    """
    n = len(rows.pair)
    q = np.arange(n) if query is None else np.asarray(query, dtype=np.int64)
    base = pair_free_logits(rows.oracle, rows.affinity)
    load = affinity_loadings()
    no_pair = {h: expit(base[h][q]) for h in HEADS}

    # Sort by (pair, time); the history of a query row is a contiguous run of its pair's rows.
    order = np.lexsort((rows.served_us, rows.pair))
    pair_sorted = rows.pair[order]
    _, pair_rank = np.unique(pair_sorted, return_inverse=True)
    served_ms = rows.served_us[order] // 1000
    t0 = int(served_ms.min()) if n else 0
    span = int(served_ms.max()) - t0 + 2 if n else 2
    # Composite (pair rank, time) key: each pair owns a block of `span` milliseconds.
    composite = pair_rank.astype(np.int64) * span + (served_ms - t0)
    rank_of_row = np.empty(n, np.int64)
    rank_of_row[order] = pair_rank
    q_rank = rank_of_row[q]
    cutoff_ms = (rows.served_us[q] - window_us) // 1000 - t0
    cutoff_ms = np.clip(cutoff_ms, -1, span - 2)
    start = np.searchsorted(composite, q_rank * span - 1, side="right")
    end = np.searchsorted(composite, q_rank * span + cutoff_ms, side="right")
    end = np.maximum(end, start)

    log_post = np.tile(_LOG_PRIOR, (len(q), 1))
    labels = {h: rows.labels[h][order].astype(np.float64) for h in HEADS}
    base_sorted = {h: base[h][order] for h in HEADS}
    for g, alpha in enumerate(AFFINITY_GRID):
        loglik = np.zeros(n)
        for h in HEADS:
            z = base_sorted[h] + load[h] * alpha
            loglik += labels[h] * log_expit(z) + (1.0 - labels[h]) * log_expit(-z)
        cum = np.concatenate([[0.0], np.cumsum(loglik)])
        log_post[:, g] += cum[end] - cum[start]
    weights = np.exp(log_post - logsumexp(log_post, axis=1, keepdims=True))
    ceiling = {
        h: np.einsum("qg,qg->q", weights, expit(base[h][q, None] + load[h] * AFFINITY_GRID))
        for h in HEADS
    }
    return {"no_pair": no_pair, "ceiling": ceiling, "history": end - start}


def _lake_dates(lake: Path, last_date: str) -> list[str]:
    folders = sorted((lake / "oracle").glob("date=*"))
    return [f.name.split("=", 1)[1] for f in folders if f.name.split("=", 1)[1] <= last_date]


LOGGING_ONLY = frozenset({"candidates_per_request"})


class WorldMismatch(FeedrankError):
    """The lake was simulated by another world than the configured one."""


def lake_world(settings: Settings, lake: Path) -> World:
    """The world of a lake: its manifest's seed and size over ``settings.simulator``.

    Raises:
        WorldMismatch: another world-shaping setting (topics, author share, rates, …) of the
            manifest's ``world`` differs from ``settings.simulator``; for a manifest without
            ``world``, a different author count.
    """
    manifest_path = lake / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    updates = {k: manifest[k] for k in ("seed", "users") if k in manifest}
    cfg = SimulatorConfig.model_validate({**settings.simulator.model_dump(), **updates})
    recorded = manifest.get("world")
    if recorded is not None:
        configured = world_key(cfg)
        # Candidates per request shape which impressions were logged, not the truth: the
        # references read those from the lake.
        keys = (recorded.keys() | configured.keys()) - LOGGING_ONLY
        differ = sorted(k for k in keys if recorded.get(k) != configured.get(k))
        if differ:
            found = ", ".join(
                f"{k} {recorded.get(k)!r} in the lake, {configured.get(k)!r} configured"
                for k in differ
            )
            raise WorldMismatch(
                f"lake {lake} was simulated by another world: {found}"
                + "; set the FEEDRANK_SIMULATOR__* the lake was simulated with"
            )
    world = World.build(cfg)
    if manifest.get("authors", world.n_authors) != world.n_authors:
        # An older manifest without ``world``: the author count is what it can tell.
        raise WorldMismatch(
            f"lake {lake} has {manifest['authors']} authors, the configured world "
            f"{world.n_authors}: set the FEEDRANK_SIMULATOR__* the lake was simulated with"
        )
    return world


def lake_references(
    settings: Settings, lake: Path, keys: pd.DataFrame, last_date: str | None = None
) -> pd.DataFrame:
    """``no_pair_<head>``, ``ceiling_<head>`` and ``pair_history`` for impressions of a lake.

    Args:
        settings: resolved settings (simulator defaults, attribution window).
        lake: lake root with ``oracle``, ``engagements`` and ``tweets``.
        keys: ``request_id``, ``tweet_id`` of the impressions to score.
        last_date: last day whose oracle rows may be history (default: the keys' last day
            is found from the lake; every day up to the newest oracle partition is read).

    Returns:
        ``keys`` columns plus the reference columns, one row per key found in the oracle.
    """
    window_s = settings.training_data.attribution_window_s
    dates = _lake_dates(lake, last_date or "9999-12-31")
    if not dates:
        raise FileNotFoundError(f"no oracle partitions under {lake}")
    oracle = pd.concat(
        [oracle_labels(lake, d, window_s).to_pandas() for d in dates], ignore_index=True
    ).drop_duplicates(["request_id", "tweet_id"])
    tweets = read_lake_table(lake, "tweets").select(["tweet_id", "author_id"]).to_pandas()
    oracle = oracle.merge(tweets.drop_duplicates("tweet_id"), on="tweet_id", how="inner")
    world = lake_world(settings, lake)
    users = oracle["user_id"].to_numpy(np.int64)
    authors = oracle["author_id"].to_numpy(np.int64)
    served = oracle["served_at"].dt.tz_convert(None).to_numpy()
    served_us = served.astype("datetime64[us]").astype(np.int64)
    rows = ReferenceRows(
        pair=users * (world.n_users + 1) + authors,
        served_us=served_us,
        oracle={h: oracle[f"p_{h}"].to_numpy(np.float64) for h in HEADS},
        affinity=world.affinity(users, authors),
        labels={h: oracle[f"label_{h}"].to_numpy(np.int8) for h in HEADS},
    )
    index = oracle[["request_id", "tweet_id"]].reset_index(drop=True)
    index["row"] = np.arange(len(index))
    wanted = keys[["request_id", "tweet_id"]].drop_duplicates().merge(index, how="inner")
    refs = reference_probabilities(rows, window_s * 1_000_000, wanted["row"].to_numpy())
    out = wanted.drop(columns="row")
    for name in REFERENCES:
        for h in HEADS:
            out[f"{name}_{h}"] = refs[name][h]
    out["pair_history"] = refs["history"]
    return out
