"""Rankings judged by the simulated world's truth: the oracle arm and the counterfactual recorder.

Simulation only: both rebuild the world from ``settings.simulator``.

The oracle policy (:func:`oracle_policy`, arm ``oracle``) ranks by the simulator's true
probabilities — the experiment's ceiling, available only against the simulated world.

The counterfactual recorder (``experiment.counterfactual``) ranks every request with every
policy of :data:`COUNTERFACTUAL_POLICIES` on the same candidates and records each ranking's
expected outcome under the simulator's truth: a paired comparison whose only noise is which
requests came, not which engagements were drawn (:func:`counterfactual_summary`, analysed by
:func:`feedrank.experiment_analysis.counterfactual_report`).
"""

from __future__ import annotations

import json
import logging
from multiprocessing.queues import Queue
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from feedrank import ranking
from feedrank.config import Settings
from feedrank.experiment_design import outcome_weights
from feedrank.feature_spec import model_features
from feedrank.model import LoadedModel
from feedrank.schemas import DEVICES, FeedRequest
from serving.scorer import (
    PolicyContext,
    PolicyResult,
    RankingPolicy,
    Scorer,
    light_keep,
    load_serving_model,
)

if TYPE_CHECKING:
    from feedrank.simulator.world import World

log = logging.getLogger(__name__)
_COLUMNS = {name: i for i, name in enumerate(model_features())}


def oracle_policy(settings: Settings) -> RankingPolicy:
    """Rank by the simulated world's true engagement probabilities (the experiment's ceiling).

    The world is rebuilt from the simulator config and seed; tweets the feature store does
    not know rank last.
    """
    return oracle_policy_in(_world_of(settings), settings.ranking.weights)


def _world_of(settings: Settings) -> World:
    from feedrank.simulator.world import World

    return World.build(settings.simulator)


def oracle_policy_in(world: World, weights: dict[str, float]) -> RankingPolicy:
    """:func:`oracle_policy` on an already built world (shared with the recorder)."""
    from feedrank.simulator.engagement import true_probabilities

    def policy(scorer: Scorer | None, ctx: PolicyContext) -> PolicyResult:
        f = ctx.features.astype(np.float64)
        created = f[:, _COLUMNS["tweet_created_ts"]]
        known = ~np.isnan(created) & (ctx.author_ids >= 0)
        scores = np.full(len(ctx.tweet_ids), -np.inf)
        if known.any():
            n = int(known.sum())
            inputs = world.inputs_from_attributes(
                np.full(n, ctx.request.user_id),
                ctx.author_ids[known],
                f[known, _COLUMNS["tweet_topic"]].astype(np.int64),
                f[known, _COLUMNS["tweet_has_media"]],
                f[known, _COLUMNS["tweet_has_link"]],
                created[known],
                np.full(n, ctx.request.requested_at.timestamp()),
                np.full(n, DEVICES.index(ctx.request.device)),
                np.zeros(n),
            )
            scores[known] = ranking.weighted_score(true_probabilities(inputs), weights)
        return PolicyResult(np.arange(len(ctx.tweet_ids)), scores, "oracle", log_features=False)

    return policy


COUNTERFACTUAL_POLICIES: tuple[str, ...] = (
    "chronological",
    "popularity",
    "light",
    "champion",
    "oracle",
)


def expected_outcome(
    world: World,
    user_id: int,
    requested_ts_s: float,
    device_code: int,
    served: np.ndarray,
    features: np.ndarray,
    author_ids: np.ndarray,
    weights: dict[str, float],
) -> tuple[float, float]:
    """Expected weighted engagements and negative actions of one served order under the truth.

    The closed-loop simulator's user (:meth:`feedrank.simulator.live.LiveSimulator.engage`)
    scrolls a geometric number of items with mean ``view_depth_mean[user]``, so the item at
    served position ``k`` is seen with probability ``(1 − 1/mean)^k``; items the world does
    not know take their slot but earn nothing, and the known ones are judged at their rank
    among the known ones, as the simulator does.

    Args:
        world: the simulated world (truth).
        user_id: the reader.
        requested_ts_s: request time, epoch seconds.
        device_code: index into ``feedrank.schemas.DEVICES``.
        served: candidate indices in the served order (top-K).
        features: the request's ``model_features()`` matrix (tweet attributes).
        author_ids: author per candidate (``-1`` unknown).
        weights: ranking weights; the positive ones count (:func:`outcome_weights`).

    Returns:
        ``(weighted_engagements, negative_actions)`` expected for this session.
    """
    from feedrank.simulator.engagement import true_probabilities

    f = features[served].astype(np.float64)
    created = f[:, _COLUMNS["tweet_created_ts"]]
    known = ~np.isnan(created) & (author_ids[served] >= 0)
    if not known.any():
        return 0.0, 0.0
    stay = 1.0 - min(1.0, 1.0 / float(world.view_depth_mean[user_id]))
    seen = stay ** np.flatnonzero(known).astype(np.float64)
    n = int(known.sum())
    probs = true_probabilities(
        world.inputs_from_attributes(
            np.full(n, user_id),
            author_ids[served][known],
            f[known, _COLUMNS["tweet_topic"]].astype(np.int64),
            f[known, _COLUMNS["tweet_has_media"]],
            f[known, _COLUMNS["tweet_has_link"]],
            created[known],
            np.full(n, requested_ts_s),
            np.full(n, device_code),
            np.arange(n, dtype=np.float64),
        )
    )
    weighted = sum(w * float(seen @ probs[h]) for h, w in outcome_weights(weights).items())
    return weighted, float(seen @ probs["negative"])


class CounterfactualScoring:
    """Every counterfactual policy's expected outcome on one request (the recorder's work).

    Policies: ``chronological`` (newest first), ``popularity`` (the offline baseline's
    engagement counts), ``light`` (the light ranker alone), ``champion`` (the served funnel:
    the light ranker's cut to ``ranking.heavy_ranker_cap``, then the heavy heads; no latency
    pruning), ``oracle`` (true probabilities). Each order gets the served feed's
    author-diversity discount and top-K.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.world = _world_of(settings)
        self.oracle = oracle_policy_in(self.world, settings.ranking.weights)

    def policy_scores(self, ctx: PolicyContext) -> dict[str, np.ndarray]:
        """Each counterfactual policy's score for every candidate of the request."""
        import pandas as pd

        from jobs.evaluate import popularity_scores

        X = ctx.features
        created = X[:, _COLUMNS["tweet_created_ts"]].astype(np.float64)
        frame = pd.DataFrame(X.astype(np.float64), columns=list(_COLUMNS))
        # The served champion's funnel without latency pruning: the light ranker's cut to
        # ranking.heavy_ranker_cap, the heavy heads on those; the rest rank last.
        light = ctx.model.light_scores(X)
        keep = light_keep(light, min(len(light), self.settings.ranking.heavy_ranker_cap))
        champion = np.full(len(light), -np.inf)
        champion[keep] = ctx.model.weighted_scores(X[keep])
        return {
            "chronological": np.where(np.isnan(created), -np.inf, created),
            "popularity": popularity_scores(frame),
            "light": light,
            "champion": champion,
            "oracle": self.oracle(None, ctx).scores,
        }

    def record(self, ctx: PolicyContext, served_model: str) -> dict:
        """Rank the request with every policy; its record (one JSON line of the log)."""
        expected, negative = {}, {}
        device = DEVICES.index(ctx.request.device)
        for name, scores in self.policy_scores(ctx).items():
            order, _ = ranking.rank(
                scores,
                ctx.author_ids,
                self.settings.ranking.author_diversity_floor,
                self.settings.ranking.top_k,
            )
            expected[name], negative[name] = expected_outcome(
                self.world,
                ctx.request.user_id,
                ctx.request.requested_at.timestamp(),
                device,
                order,
                ctx.features,
                ctx.author_ids,
                self.settings.ranking.weights,
            )
        return {
            "request_id": ctx.request.request_id,
            "user_id": ctx.request.user_id,
            "served_model": served_model,
            "candidates": len(ctx.tweet_ids),
            "expected_weighted_engagements": expected,
            "expected_negative_actions": negative,
        }


# What the serve process hands the recorder's process per request: the request, its
# candidates' ids, authors and feature matrix, the serving model's version, the served one.
_Job = tuple[FeedRequest, np.ndarray, np.ndarray, np.ndarray, str, str]


def _record_requests(settings: Settings, path: Path, jobs: Queue[_Job | None]) -> None:
    """The recorder process's loop: score each queued request until ``None`` arrives or
    the serve process is gone."""
    import contextlib
    import multiprocessing
    import os
    import queue

    from serving.scorer import Budget

    with contextlib.suppress(OSError):
        os.nice(10)  # the serve loop comes first when the cores are busy
    scoring = CounterfactualScoring(settings)
    models: dict[str, LoadedModel] = {}
    parent = multiprocessing.parent_process()
    with path.open("a") as out:
        while True:
            try:
                job = jobs.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return  # the serve process was killed: nothing more will come
                continue
            if job is None:
                return
            request, tweet_ids, author_ids, features, version, served_model = job
            try:
                if version not in models:
                    models[version] = load_serving_model(version, settings)
                model, budget = models[version], Budget(deadline_s=0.0)
                ctx = PolicyContext(request, tweet_ids, author_ids, features, model, budget, {})
                out.write(json.dumps(scoring.record(ctx, served_model)) + "\n")
                out.flush()
            except Exception:  # one bad request must not stop the recording of the others
                log.exception("counterfactual recording failed for %s", request.request_id)


class CounterfactualRecorder:
    """The scorer's ``on_scored`` hook: every policy's expected outcome on the same request
    (:class:`CounterfactualScoring`), recorded to ``<reports>/counterfactual/<pid>.jsonl``,
    one JSON line per request.

    The hook only queues the request's arrays; a separate, niced process (spawned, its own
    interpreter) ranks and scores them. Measured in the demo: inline, the champion arm's
    p50 / p99 was 63 / 343 ms; on a thread of the serve process (sharing its interpreter
    lock and cores at equal priority) p99 82–87 ms with 1–2 deadline misses, against ~30 ms
    without the recorder (figures in docs/quality.md). The queue is drained at exit
    (:meth:`flush`).
    """

    def __init__(self, settings: Settings) -> None:
        import atexit
        import multiprocessing
        import os

        self.path = settings.paths.reports / "counterfactual" / f"{os.getpid()}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("spawn")  # the serve process has threads
        self._jobs: Queue[_Job | None] = context.Queue()
        self._process = context.Process(
            target=_record_requests,
            args=(settings, self.path, self._jobs),
            name="counterfactual",
            daemon=True,
        )
        self._process.start()
        self._closed = False
        atexit.register(self.flush)

    def __call__(self, ctx: PolicyContext, result: PolicyResult) -> None:
        if self._closed or ctx.model is None or not len(ctx.tweet_ids):
            return
        self._jobs.put(
            (
                ctx.request,
                ctx.tweet_ids,
                ctx.author_ids,
                ctx.features,
                ctx.model.version,
                result.model_version,
            )
        )

    def flush(self, timeout_s: float = 45.0) -> None:
        """Record every queued request (at most ``timeout_s``: the demo gives a stopping
        serve process 60 s) and stop the process."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._process.join(timeout_s)
        if self._process.is_alive():
            log.warning("counterfactual recorder still busy after %.0f s: stopped", timeout_s)
            self._process.terminate()
            # Requests it never read stay in the pipe: exiting must not wait to write them.
            self._jobs.cancel_join_thread()


def read_counterfactual_records(folder: Path, request_ids: set[str] | None = None) -> list[dict]:
    """The counterfactual records under ``folder`` (optionally only some requests)."""
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if request_ids is None or record["request_id"] in request_ids:
                    records.append(record)
    return records


def counterfactual_summary(settings: Settings, request_ids: set[str]) -> dict | None:
    """The paired comparison (:func:`feedrank.experiment_analysis.counterfactual_report`) of the
    recorded requests among ``request_ids``, resampling users; ``None`` with fewer than two."""
    from feedrank.experiment_analysis import counterfactual_report

    records = read_counterfactual_records(settings.paths.reports / "counterfactual", request_ids)
    if len(records) < 2:
        return None
    return counterfactual_report(
        {
            name: np.array([r["expected_weighted_engagements"][name] for r in records])
            for name in COUNTERFACTUAL_POLICIES
        },
        users=np.array([r["user_id"] for r in records]),
    )
