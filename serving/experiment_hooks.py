"""The online experiment and shadow mode, plugged into the scorer's arm and hook points.

:func:`experiment_hooks` gives :class:`serving.scorer.Scorer` its arm assignment, one ranking
policy per arm and its ``on_scored`` hooks. Arms come from ``settings.experiment.arms``
(stable hash of the user id, :func:`feedrank.experiment_design.assign_arm`): ``control`` is
the old chronological feed, ``treatment`` the champion, ``challenger`` a named registry
version, and ``oracle`` ranks by the simulator's true probabilities
(:func:`serving.counterfactual.oracle_policy`).

Shadow mode scores every model-ranked request with a challenger as well; its ranking is only
compared with the served one (Spearman rank correlation, top-10 overlap, its own latency) and
never leaves the process. The counterfactual recorder (simulation only) is the other hook:
:mod:`serving.counterfactual`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client import Histogram
from scipy import stats

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.experiment_design import assign_arm
from feedrank.model import LoadedModel
from feedrank.schemas import FeedRequest
from feedrank.stats import percentile
from serving.counterfactual import CounterfactualRecorder, oracle_policy
from serving.scorer import (
    PolicyContext,
    PolicyResult,
    RankingPolicy,
    Scorer,
    champion_policy,
    chronological_policy,
    load_serving_model,
)

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
