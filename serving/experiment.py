"""The online experiment and shadow mode, plugged into the scorer's arm and hook points.

Long because: the arms, the shadow and the counterfactual recorders of one online experiment.

Arms come from ``settings.experiment.arms`` (stable hash of the user id, see
:func:`feedrank.experiment.assign_arm`): ``control`` is the old chronological feed,
``treatment`` the champion, ``challenger`` a named registry version, and ``oracle`` ranks by
the simulator's true probabilities — the ceiling, available only against the simulated world.

Shadow mode scores every model-ranked request with a challenger as well; its ranking is only
compared with the served one (Spearman rank correlation, top-10 overlap, its own latency) and
never leaves the process.

The counterfactual recorder (``experiment.counterfactual``, simulation only) ranks every
request with every policy of :data:`COUNTERFACTUAL_POLICIES` on the same candidates and
records each ranking's expected outcome under the simulator's truth: a paired comparison
whose only noise is which requests came, not which engagements were drawn.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import Histogram
from scipy import stats

from feedrank import ranking
from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.experiment import assign_arm, outcome_weights
from feedrank.feature_spec import model_features
from feedrank.model import LoadedModel
from feedrank.schemas import DEVICES, FeedRequest
from feedrank.stats import percentile
from serving.scorer import (
    PolicyContext,
    PolicyResult,
    RankingPolicy,
    Scorer,
    champion_policy,
    chronological_policy,
    load_serving_model,
)

if TYPE_CHECKING:
    from feedrank.simulator.world import World

log = logging.getLogger(__name__)
_COLUMNS = {name: i for i, name in enumerate(model_features())}

SHADOW_LATENCY = Histogram(
    "feedrank_serving_shadow_seconds", "Challenger scoring time in shadow mode.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
)  # fmt: skip
SHADOW_OVERLAP = Histogram(
    "feedrank_serving_shadow_top10_overlap_ratio",
    "Share of the served top 10 the challenger also ranks there.",
    buckets=(0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0),
)  # fmt: skip


def arm_of(settings: Settings) -> Callable[[FeedRequest], str]:
    """The request -> arm function of the configured experiment."""
    arms, salt = dict(settings.experiment.arms), settings.experiment.salt
    return lambda request: assign_arm(request.user_id, arms, salt)


def model_policy(model: LoadedModel) -> RankingPolicy:
    """Rank with a fixed registry model (the challenger arm), all candidates, heavy heads."""

    def policy(scorer: Scorer, ctx: PolicyContext) -> PolicyResult:
        scores = model.weighted_scores(ctx.features)
        return PolicyResult(np.arange(len(ctx.tweet_ids)), scores, model.version)

    return policy


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
    from feedrank.simulator.engagement import head_probabilities

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
            scores[known] = ranking.weighted_score(head_probabilities(inputs), weights)
        return PolicyResult(np.arange(len(ctx.tweet_ids)), scores, "oracle", log_features=False)

    return policy


def experiment_policies(
    settings: Settings, challenger: LoadedModel | None = None
) -> dict[str, RankingPolicy]:
    """One ranking policy per configured arm; an arm without a policy is a config error."""
    policies: dict[str, RankingPolicy] = {}
    for arm in settings.experiment.arms:
        if arm == "control":
            policies[arm] = chronological_policy
        elif arm == "treatment":
            policies[arm] = champion_policy
        elif arm == "challenger":
            if challenger is None:
                raise FeedrankError("the challenger arm needs experiment.challenger_version")
            policies[arm] = model_policy(challenger)
        elif arm == "oracle":
            policies[arm] = oracle_policy(settings)
        else:
            raise FeedrankError(f"experiment arm {arm!r} has no ranking policy")
    return policies


class ShadowScorer:
    """The scorer's ``on_scored`` hook: score the same candidates with a challenger, compare.

    Results are kept in memory (``summary()``), exported as prometheus histograms and
    appended to ``<reports>/shadow/<challenger>.jsonl``; nothing is produced to Kafka.
    """

    def __init__(self, settings: Settings, challenger: LoadedModel) -> None:
        self.challenger = challenger
        self.path = settings.paths.reports / "shadow" / f"{challenger.version}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, ctx: PolicyContext, result: PolicyResult) -> None:
        if result.model_version in ("chronological", "oracle", self.challenger.version):
            return
        features = ctx.features[result.index]
        started = time.perf_counter()
        shadow_scores = self.challenger.weighted_scores(features)
        elapsed_s = time.perf_counter() - started
        top = min(10, len(result.index))
        served_top = set(np.argsort(-result.scores, kind="stable")[:top].tolist())
        shadow_top = set(np.argsort(-shadow_scores, kind="stable")[:top].tolist())
        overlap = len(served_top & shadow_top) / top if top else 1.0
        corr = stats.spearmanr(result.scores, shadow_scores).statistic if top > 1 else 1.0
        record = {
            "request_id": ctx.request.request_id,
            "served_model": result.model_version,
            "challenger": self.challenger.version,
            "candidates": len(result.index),
            "spearman": float(corr) if np.isfinite(corr) else None,
            "top10_overlap": overlap,
            "latency_ms": elapsed_s * 1000.0,
        }
        SHADOW_LATENCY.observe(elapsed_s)
        SHADOW_OVERLAP.observe(overlap)
        with self._lock:
            self.records.append(record)
            with self.path.open("a") as out:
                out.write(json.dumps(record) + "\n")

    def summary(self) -> dict:
        """Agreement and latency over the requests seen so far."""
        return summarize_shadow(self.records)


def summarize_shadow(records: list[dict]) -> dict:
    """Mean rank correlation, mean top-10 overlap and latency percentiles of shadow records."""
    if not records:
        return {"requests": 0}
    corr = [r["spearman"] for r in records if r["spearman"] is not None]
    latency = np.array([r["latency_ms"] for r in records])
    return {
        "requests": len(records),
        "challenger": records[-1]["challenger"],
        "spearman_mean": float(np.mean(corr)) if corr else None,
        "top10_overlap_mean": float(np.mean([r["top10_overlap"] for r in records])),
        "latency_p50_ms": percentile(latency, 50),
        "latency_p99_ms": percentile(latency, 99),
    }


def read_shadow_log(path: Path) -> list[dict]:
    """The records of a shadow log file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    from feedrank.simulator.engagement import head_probabilities

    f = features[served].astype(np.float64)
    created = f[:, _COLUMNS["tweet_created_ts"]]
    known = ~np.isnan(created) & (author_ids[served] >= 0)
    if not known.any():
        return 0.0, 0.0
    stay = 1.0 - min(1.0, 1.0 / float(world.view_depth_mean[user_id]))
    seen = stay ** np.flatnonzero(known).astype(np.float64)
    n = int(known.sum())
    probs = head_probabilities(
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
    engagement counts), ``light`` (the light ranker alone), ``champion`` (the heavy heads on
    every candidate, no latency pruning), ``oracle`` (true probabilities). Each order gets
    the served feed's author-diversity discount and top-K.
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
        return {
            "chronological": np.where(np.isnan(created), -np.inf, created),
            "popularity": popularity_scores(frame),
            "light": ctx.model.light_scores(X),
            "champion": ctx.model.weighted_scores(X),
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
    """The paired comparison (:func:`feedrank.experiment.counterfactual_report`) of the
    recorded requests among ``request_ids``, resampling users; ``None`` with fewer than two."""
    from feedrank.experiment import counterfactual_report

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


def _both(*hooks: Callable | None) -> Callable | None:
    active = [h for h in hooks if h is not None]
    if len(active) <= 1:
        return active[0] if active else None

    def call_all(ctx: PolicyContext, result: PolicyResult) -> None:
        for hook in active:
            hook(ctx, result)

    return call_all


def experiment_hooks(settings: Settings) -> dict:
    """Keyword arguments for :class:`Scorer`: arm assignment, policies, shadow and
    counterfactual hooks."""
    version = settings.experiment.challenger_version
    challenger = load_serving_model(version, settings) if version else None
    if settings.experiment.shadow and challenger is None:
        raise FeedrankError("shadow mode needs experiment.challenger_version")
    return {
        "assign_arm": arm_of(settings),
        "policies": experiment_policies(settings, challenger),
        "on_scored": _both(
            ShadowScorer(settings, challenger) if settings.experiment.shadow else None,
            CounterfactualRecorder(settings) if settings.experiment.counterfactual else None,
        ),
    }
