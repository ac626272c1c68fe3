"""``feedrank bench funnel``: what the funnel's cut (``ranking.heavy_ranker_cap``) costs in
ranking quality, judged by the simulated world's truth.

The world is the run folder's (``paths.home``): its lake (tweets, follows), its online store
and its champion (a model version can be named). Requests are drawn as the live simulator
draws them (users weighted by activity, ``simulator.serving_candidates`` candidates from
:meth:`feedrank.simulator.world.World.select_candidates`) during the hour after the lake's
last day, and hydrated by the serving fast path (:class:`serving.hydration.FeatureHydrator`,
features as served). Each request is then ranked, on the same candidates:

* for each cap K, by the funnel: the light ranker keeps its top K
  (:func:`serving.scorer.light_keep`), the heavy heads score them, and the served order is
  :func:`feedrank.ranking.rank` (author diversity, ``ranking.top_k``);
* by the oracle (the true probabilities, :func:`serving.counterfactual.oracle_policy_in`),
  same discount and top-K.

Relevance of a candidate is its true weighted engagement ``max(0, Σ_h w_h · p_h)`` at the top
of the feed; NDCG@10 of each order is :func:`feedrank.ranking.grouped_ndcg`. Reported per K:
NDCG@10, its share of the full ranking's (the largest K, i.e. every candidate heavy-ranked)
and of the oracle's, the recall of the full ranking's served top ``top_k`` inside the light
ranker's top K, and the heavy stage's CPU per request (thread time of the heads on K rows).
Not part of ``make test``; figures in docs/performance.md.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feedrank import ranking
from feedrank.config import Settings
from feedrank.errors import FeedrankError

DEFAULT_CAPS: tuple[int, ...] = (100, 200, 300, 400, 600, 1000)
NDCG_AT = 10


@dataclass(frozen=True)
class RankedCandidates:
    """One request's candidates with every score the comparison needs (aligned arrays)."""

    relevance: np.ndarray  # true weighted engagement, clipped at 0
    light: np.ndarray  # light-ranker score
    heavy: np.ndarray  # heavy ranker's weighted score (every candidate)
    oracle: np.ndarray  # true weighted score (-inf: unknown to the world)
    authors: np.ndarray  # author per candidate (int64)


def order_scores(n: int, served: np.ndarray) -> np.ndarray:
    """Scores over all ``n`` candidates that reproduce a served order for NDCG.

    The i-th served candidate scores ``len(served) − i``; candidates not served score 0 (they
    tie below every served one, so they only count when fewer are served than the cut-off).
    """
    scores = np.zeros(n)
    scores[served] = np.arange(len(served), 0, -1, dtype=np.float64)
    return scores


def recall_in(reference: np.ndarray, kept: np.ndarray) -> float:
    """Share of ``reference`` (candidate indices) that is inside ``kept``."""
    if len(reference) == 0:
        return float("nan")
    return float(np.isin(reference, kept).mean())


def funnel_quality(
    requests: Sequence[RankedCandidates],
    caps: Sequence[int],
    top_k: int,
    diversity_floor: float,
    k: int = NDCG_AT,
) -> dict[str, Any]:
    """NDCG@k of the funnel's order per cap against the truth, beside the full and the oracle.

    Args:
        requests: each request's candidates and scores.
        caps: light-ranker caps K to compare; a cap at or above a request's candidate count
            heavy-ranks all of them (the full ranking).
        top_k: items served per feed (``ranking.top_k``); also the size of the full ranking's
            top whose recall is measured.
        diversity_floor: ``ranking.author_diversity_floor``.
        k: NDCG cut-off.

    Returns:
        ``{"requests", "full_ndcg", "oracle_ndcg", "light_only_ndcg", "caps": {K: {"ndcg",
        "share_of_full", "share_of_oracle", "recall_full_top", "heavy_rows_mean"}}}``; NDCG
        means skip requests without any relevant candidate (:func:`ranking.grouped_ndcg`).
    """
    if not requests:
        raise ValueError("funnel_quality needs at least one request")
    groups, relevance = [], []
    scores: dict[Any, list[np.ndarray]] = {key: [] for key in (*caps, "full", "oracle", "light")}
    recall: dict[int, list[float]] = {cap: [] for cap in caps}
    rows: dict[int, list[int]] = {cap: [] for cap in caps}

    def served(score: np.ndarray, index: np.ndarray, authors: np.ndarray) -> np.ndarray:
        order, _ = ranking.rank(score[index], authors[index], diversity_floor, top_k)
        return index[order]

    for g, req in enumerate(requests):
        n = len(req.relevance)
        everything = np.arange(n)
        groups.append(np.full(n, g))
        relevance.append(req.relevance)
        full = served(req.heavy, everything, req.authors)
        scores["full"].append(order_scores(n, full))
        scores["oracle"].append(order_scores(n, served(req.oracle, everything, req.authors)))
        scores["light"].append(order_scores(n, served(req.light, everything, req.authors)))
        for cap in caps:
            kept = everything if cap >= n else _light_keep(req.light, cap)
            scores[cap].append(order_scores(n, served(req.heavy, kept, req.authors)))
            recall[cap].append(recall_in(full, kept))
            rows[cap].append(len(kept))
    group_ids, gains = np.concatenate(groups), np.concatenate(relevance)

    def ndcg(key: Any) -> float:
        return ranking.grouped_ndcg(group_ids, gains, np.concatenate(scores[key]), k=k)

    full_ndcg, oracle_ndcg = ndcg("full"), ndcg("oracle")
    out: dict[str, Any] = {
        "requests": len(requests),
        "full_ndcg": full_ndcg,
        "oracle_ndcg": oracle_ndcg,
        "light_only_ndcg": ndcg("light"),
        "caps": {},
    }
    for cap in caps:
        value = ndcg(cap)
        out["caps"][int(cap)] = {
            "ndcg": value,
            "share_of_full": value / full_ndcg,
            "share_of_oracle": value / oracle_ndcg,
            "recall_full_top": float(np.nanmean(recall[cap])),
            "heavy_rows_mean": float(np.mean(rows[cap])),
        }
    return out


def _light_keep(light: np.ndarray, keep: int) -> np.ndarray:
    from serving.scorer import light_keep

    return light_keep(light, keep)


# ------------------------------------------------------------------ the world's requests


def _log(message: str) -> None:
    print(f"[bench funnel] {message}", file=sys.stderr, flush=True)


def missing_world(settings: Settings) -> str | None:
    """Why the run folder has no world to measure (``None``: it has a simulated lake)."""
    if (settings.paths.lake / "_manifest.json").is_file():
        return None
    return (
        f"no simulated world in {settings.paths.lake}: run `make demo` or build one "
        "(docs/performance.md, 'The funnel's cut')"
    )


def _lake_world(settings: Settings) -> tuple[Any, dt.date]:
    """The simulated world of the run folder's lake (tweets and follows loaded) and its
    last day."""
    from feedrank.lake import read_lake_table
    from feedrank.simulator.world import World

    reason = missing_world(settings)
    if reason is not None:
        raise FeedrankError(reason)
    manifest = json.loads((settings.paths.lake / "_manifest.json").read_text())
    cfg = settings.simulator.model_validate(
        {**settings.simulator.model_dump(), **manifest.get("world", {})}
    )
    world = World.build(cfg)
    world.load_tweets(read_lake_table(settings.paths.lake, "tweets"))
    world.load_follows(read_lake_table(settings.paths.lake, "follows"))
    return world, dt.date.fromisoformat(manifest["end_date"])


def collect_requests(
    settings: Settings, n_requests: int, model_version: str, seed: int
) -> tuple[list[RankedCandidates], list[Any], list[np.ndarray], dict[str, Any]]:
    """Draw and hydrate ``n_requests`` requests of the run folder's world; score them.

    Returns:
        The scored candidates, the model, each request's feature matrix, and a description
        of the world (start of the request hour, candidates per request, model version).
    """
    from feedrank.schemas import DEVICES, FeedRequest
    from serving.counterfactual import oracle_policy_in
    from serving.hydration import FeatureHydrator
    from serving.scorer import Budget, PolicyContext, clean_author_ids, load_serving_model

    world, last_day = _lake_world(settings)
    model = load_serving_model(model_version, settings)
    hydrator = FeatureHydrator(settings)
    oracle = oracle_policy_in(world, settings.ranking.weights)
    rng = np.random.default_rng(seed)
    hour_start = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), dt.UTC)
    start_us = int(hour_start.timestamp() * 1e6)
    times = np.sort(start_us + rng.integers(0, 3_600_000_000, n_requests))
    weight = world.requests_per_day / world.requests_per_day.sum()
    users = rng.choice(world.n_users, size=n_requests, p=weight)
    devices = world.request_devices(users, rng)
    rows, tweet_idx = world.select_candidates(
        users, times, settings.simulator.serving_candidates, rng
    )
    out: list[RankedCandidates] = []
    matrices: list[np.ndarray] = []
    try:
        for i in range(n_requests):
            tweet_ids = np.sort(world.tweets.tweet_id[tweet_idx[rows == i]])
            if len(tweet_ids) == 0:
                continue
            request = FeedRequest(
                request_id=f"funnel-{i:05d}",
                user_id=int(users[i]),
                requested_at=dt.datetime.fromtimestamp(times[i] / 1e6, dt.UTC),
                device=DEVICES[int(devices[i])],
                candidate_tweet_ids=tweet_ids.tolist(),
            )
            ids = request.candidate_tweet_ids
            X = hydrator.hydrate(
                request.user_id, ids, request.requested_at.timestamp(), request.device
            )
            authors = clean_author_ids(np.asarray(hydrator.author_ids(ids)))
            ctx = PolicyContext(
                request=request,
                tweet_ids=tweet_ids,
                author_ids=authors,
                features=X,
                model=model,
                budget=Budget(deadline_s=float("inf")),
                timings_ms={},
            )
            truth = oracle(None, ctx).scores
            heavy = ranking.weighted_score(model.predict_heads(X), settings.ranking.weights)
            out.append(
                RankedCandidates(
                    relevance=np.where(np.isfinite(truth), np.maximum(truth, 0.0), 0.0),
                    light=model.light_scores(X),
                    heavy=heavy,
                    oracle=truth,
                    authors=authors,
                )
            )
            matrices.append(X)
    finally:
        hydrator.close()
    world_info = {
        "lake_last_day": last_day.isoformat(),
        "requested_from": hour_start.isoformat(),
        "candidates_mean": float(np.mean([len(r.relevance) for r in out])) if out else 0.0,
        "model_version": model.version,
        "users": int(world.n_users),
    }
    return out, model, matrices, world_info


def heavy_cpu_ms(
    model: Any,
    matrices: Sequence[np.ndarray],
    lights: Sequence[np.ndarray],
    caps: Sequence[int],
    weights: dict[str, float],
) -> dict[int, float]:
    """Median thread CPU (ms) of the heavy stage on each cap's kept rows, per request.

    Caps are interleaved request by request, so a change of machine load hits them alike.
    """
    cpu: dict[int, list[float]] = {int(cap): [] for cap in caps}
    for X, light in zip(matrices, lights, strict=True):
        for cap in caps:
            kept = X if cap >= len(X) else X[_light_keep(light, cap)]
            started = time.thread_time()
            ranking.weighted_score(model.predict_heads(kept), weights)
            cpu[int(cap)].append((time.thread_time() - started) * 1000.0)
    return {cap: float(np.median(values)) for cap, values in cpu.items()}


def run_bench(
    settings: Settings,
    n_requests: int = 200,
    caps: Sequence[int] = DEFAULT_CAPS,
    model_version: str = "champion",
    seed: int = 24,
) -> dict[str, Any]:
    """The whole bench: requests of the run folder's world, quality per cap, heavy CPU per cap.

    Raises:
        FeedrankError: no simulated world or no model in the run folder.
    """
    import os

    caps = sorted({int(c) for c in caps})
    started = time.monotonic()
    requests, model, matrices, world = collect_requests(settings, n_requests, model_version, seed)
    if not requests:
        raise FeedrankError("no request had candidates: is the lake's world empty?")
    _log(f"{len(requests)} requests hydrated and scored in {time.monotonic() - started:.0f} s")
    quality = funnel_quality(
        requests, caps, settings.ranking.top_k, settings.ranking.author_diversity_floor
    )
    cpu = heavy_cpu_ms(model, matrices, [r.light for r in requests], caps, settings.ranking.weights)
    full_cpu = cpu[max(caps)]
    for cap in caps:
        quality["caps"][cap]["heavy_cpu_ms"] = cpu[cap]
        quality["caps"][cap]["heavy_cpu_share_of_full"] = cpu[cap] / full_cpu
    return {
        "bench": "funnel",
        "ndcg_at": NDCG_AT,
        "top_k": settings.ranking.top_k,
        "seed": seed,
        "world": world,
        **quality,
        "load_average": list(os.getloadavg()),
        "seconds": round(time.monotonic() - started, 1),
    }


def print_table(figures: dict[str, Any]) -> None:
    """The per-cap table of :func:`run_bench`'s figures."""
    print(
        f"{figures['requests']} requests, ~{figures['world']['candidates_mean']:.0f} candidates "
        f"each, model {figures['world']['model_version']}; NDCG@{figures['ndcg_at']}: full "
        f"{figures['full_ndcg']:.4f}, oracle {figures['oracle_ndcg']:.4f}, light only "
        f"{figures['light_only_ndcg']:.4f}"
    )
    print("cap  heavy rows  NDCG@10  of full  of oracle  recall of full top  heavy CPU ms")
    for cap, row in figures["caps"].items():
        print(
            f"{cap:>4} {row['heavy_rows_mean']:>10.0f} {row['ndcg']:>8.4f} "
            f"{row['share_of_full']:>8.2%} {row['share_of_oracle']:>9.2%} "
            f"{row['recall_full_top']:>19.2%} {row['heavy_cpu_ms']:>12.2f}"
        )


def write_json(figures: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
