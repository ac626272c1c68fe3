"""The scorer core: one feed request in, a ranked feed and its impressions out. No Kafka here.

Long because: the funnel's stages share one request's deadline state; one class keeps them in
order.

The funnel per request (each stage timed and checked against the request's deadline,
``requested_at + serving.budget_ms``):

1. **replay** — a request whose feed is still in the feed cache is answered with that feed,
   byte for byte (at-least-once delivery makes duplicates harmless);
2. **candidates** — duplicate candidates and tweets already served to the user (the feed
   cache's seen set) are dropped;
3. **hydrate** — the feature matrix in ``model_features()`` order (Feast fast path plus
   request context, :class:`serving.hydration.FeatureHydrator`);
   A request already past its deadline on arrival skips hydration and models: it is
   answered in candidate order (``model_version="fallback"``, degraded, a counted miss) so
   a backlog drains fast; so is a request whose hydration fails (the online store is down:
   ``feedrank_serving_dependency_errors_total``), rather than going unanswered;
4. **light** — the light ranker prunes to ``ranking.heavy_ranker_cap`` when there are more
   candidates — and further, down to ``ranking.heavy_ranker_floor``, when the request has
   waited so long that the heavy ranker on all of them would answer after
   ``requested_at + serving.aim_ms`` — and is the fallback answer when the heavy ranker
   cannot finish before the deadline;
5. **heavy** — every head in one batch (``LoadedModel.predict_heads``), then
   :func:`feedrank.ranking.weighted_score`; runs on a worker thread so a slow model can be
   abandoned at the deadline (XGBoost releases the GIL) and the light answer served instead,
   marked ``degraded``;
6. **rank** — author-diversity discount and top-K (:func:`feedrank.ranking.rank`).

An answer after the deadline is a miss: counted, flagged in the feed, never hidden.

Arms: ``assign_arm`` maps a request to an arm name and ``policies`` maps each arm to a
:data:`RankingPolicy`; the default serves everyone the champion (arm ``treatment``). The
online experiment plugs in :func:`chronological_policy` for its control arm. ``on_scored``
is called with every scored request's matrix (a shadow model can score it there).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from feedrank import ranking
from feedrank.config import Settings
from feedrank.feature_spec import model_features
from feedrank.model import LoadedModel
from feedrank.model_files import load_model
from feedrank.schemas import FeedRequest, Impression, RankedFeed, RankedItem, encode
from serving import metrics
from serving.feed_cache import FeedCache

log = logging.getLogger("feedrank.serving")

TREATMENT_ARM = "treatment"
CONTROL_ARM = "control"
# Least time kept back for ranking, building and handing the answer to the producer once
# the heavy ranker is done or abandoned; raised to twice the measured cost when that is more.
PUBLISH_RESERVE_MS = 25.0
# Fewest rows a heavy call must have to teach the cost per row. Below that the per-call
# overhead and noise dominate: in `make demo` a one-candidate request (its readiness probe
# then) taught 5.4 ms per row, ~500 times the true cost, and the next 26 full requests
# skipped the heavy ranker.
MIN_ROWS_TO_LEARN = 32
# model_version of feeds answered without any model (already past the deadline on arrival).
FALLBACK_VERSION = "fallback"
# The ranker that answers, degraded, while there is no champion model: the old system, which
# is also the experiment's control arm (chronological_policy).
NO_CHAMPION_RANKER = "chronological"
_FEATURE_INDEX = {name: i for i, name in enumerate(model_features())}
_CREATED_COL = _FEATURE_INDEX["tweet_created_ts"]


class Hydrator(Protocol):
    """What the scorer needs from :class:`serving.hydration.FeatureHydrator`."""

    def hydrate(
        self, user_id: int, tweet_ids: list[int], request_ts: float, device: str
    ) -> np.ndarray: ...

    def author_ids(self, tweet_ids: list[int]) -> np.ndarray: ...

    def close(self) -> None: ...


def load_serving_model(version: str, settings: Settings) -> LoadedModel:
    """:func:`feedrank.model_files.load_model` (checksums, feature contract) with the serving
    thread count (``serving.model_nthread``): every model a serve process scores with is
    loaded here. ``version``: a model folder name, ``"champion"`` or a path; a version only in
    a shared MLflow store is downloaded first (:func:`feedrank.tracking.local_model_dir`)."""
    from feedrank.tracking import local_model_dir

    folder = local_model_dir(settings, version)
    return load_model(folder, settings, nthread=settings.serving.model_nthread)


class ModelSlot:
    """The model currently serving; swapped atomically by the model watcher.

    The scorer reads :attr:`current` once per request, so a swap takes effect between
    requests and never changes a model in the middle of one. ``None`` means no champion yet:
    requests are answered by :data:`NO_CHAMPION_RANKER` until the watcher swaps one in.
    """

    def __init__(self, model: LoadedModel | None) -> None:
        self._model = model
        metrics.MODEL_VERSION.labels(version=_version_label(model)).set(1)

    @property
    def current(self) -> LoadedModel | None:
        return self._model

    @property
    def version(self) -> str | None:
        """The serving model's version; ``None`` while there is no champion."""
        return None if self._model is None else self._model.version

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` from the next request on; returns the model it replaced."""
        old, self._model = self._model, model
        metrics.MODEL_VERSION.labels(version=_version_label(old)).set(0)
        metrics.MODEL_VERSION.labels(version=model.version).set(1)
        return old


def _version_label(model: LoadedModel | None) -> str:
    return NO_CHAMPION_RANKER if model is None else model.version


@dataclass
class Budget:
    """The time left of one request; every stage asks it before starting."""

    deadline_s: float  # wall-clock epoch seconds

    def left_ms(self) -> float:
        return (self.deadline_s - time.time()) * 1000.0


@dataclass(frozen=True)
class Arrival:
    """When the serve loop's poll that returned a request was called and returned
    (wall-clock epoch seconds): splits the request's wait before scoring into backlog, fetch
    and queued (``serving.metrics.WAIT``)."""

    poll_called_s: float
    poll_returned_s: float


@dataclass
class PolicyContext:
    """Everything a ranking policy may use for one request."""

    request: FeedRequest
    tweet_ids: np.ndarray  # candidates after dedupe, int64
    author_ids: np.ndarray  # int64, aligned with tweet_ids
    features: np.ndarray  # (n, len(model_features())) float32, NaN missing
    model: LoadedModel | None  # None: no champion yet
    budget: Budget
    timings_ms: dict[str, float]
    waiting: int = 0  # requests already polled by this process and queued behind this one


@dataclass
class PolicyResult:
    """A policy's scores for a subset of candidates (indices into the context's arrays)."""

    index: np.ndarray
    scores: np.ndarray
    model_version: str
    degraded: bool = False
    log_features: bool = True


RankingPolicy = Callable[["Scorer", PolicyContext], PolicyResult]


def champion_policy(scorer: Scorer, ctx: PolicyContext) -> PolicyResult:
    """The funnel: light-ranker pruning, heavy heads within the budget, light as fallback."""
    return scorer.funnel_scores(ctx)


def chronological_policy(scorer: Scorer, ctx: PolicyContext) -> PolicyResult:
    """The old system (experiment control): newest first, no model."""
    created = ctx.features[:, _CREATED_COL].astype(np.float64)
    scores = np.where(np.isnan(created), -np.inf, created)
    return PolicyResult(
        index=np.arange(len(ctx.tweet_ids)),
        scores=scores,
        model_version="chronological",
        log_features=False,
    )


@dataclass
class ScoredRequest:
    """The scorer's answer to one request.

    Attributes:
        feed: The ranked feed.
        payload: ``feed`` encoded for Kafka (the cached bytes on a replay).
        impressions: One event per served item (empty on a replay: they were logged the
            first time, before the feed was cached).
        replayed: Answered from the feed cache.
        missed: Answered after the deadline.
    """

    feed: RankedFeed
    payload: bytes
    impressions: list[Impression] = field(default_factory=list)
    replayed: bool = False
    missed: bool = False


class Scorer:
    """Request in, ranked feed and impressions out (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        models: ModelSlot,
        hydrator: Hydrator,
        feed_cache: FeedCache | None = None,
        *,
        assign_arm: Callable[[FeedRequest], str] | None = None,
        policies: Mapping[str, RankingPolicy] | None = None,
        on_scored: Callable[[PolicyContext, PolicyResult], None] | None = None,
        stage_delays_ms: Mapping[str, float] | None = None,
    ) -> None:
        """Build a scorer.

        Args:
            settings: Resolved settings (``serving``, ``ranking``).
            models: The serving model, swapped by the watcher.
            hydrator: Feature hydration (Feast fast path + context).
            feed_cache: Seen-dedupe and replay store; ``None`` disables both.
            assign_arm: Arm of a request; default: everyone in ``treatment``.
            policies: Ranking policy per arm; default ``{"treatment": champion_policy,
                "control": chronological_policy}``.
            on_scored: Called after each scored request (e.g. a shadow model).
            stage_delays_ms: Test hook: sleep this long at the start of a stage
                (``hydrate``, ``light``, ``heavy``, ``rank``) to simulate a slow dependency.
        """
        self.settings = settings
        self.models = models
        self.hydrator = hydrator
        self.feed_cache = feed_cache
        self.assign_arm = assign_arm or (lambda request: TREATMENT_ARM)
        self.policies: dict[str, RankingPolicy] = dict(
            policies or {TREATMENT_ARM: champion_policy, CONTROL_ARM: chronological_policy}
        )
        self.on_scored = on_scored
        self.stage_delays_ms = dict(stage_delays_ms or {})
        # Event times (requested_at, served_at) are on the wall clock shifted by this (the
        # demo's day); deadlines are kept on the wall clock, where time passes.
        self._clock_offset_s = float(settings.clock.offset_s)
        self._heavy_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="heavy-ranker"
        )
        self._heavy_busy = threading.Event()
        # Smoothed heavy-stage cost, to skip the heavy ranker when it would not fit anyway.
        self._heavy_ms_per_row: float | None = None
        # What a heavy call costs whatever its rows: one XGBoost call's fixed cost (~0.2 ms
        # for the joint booster; five calls, ~1 ms, when the heads cannot be joined).
        self._heavy_fixed_ms = 0.2
        # Smoothed cost of everything after scoring (rank, feed, impressions, encoding).
        self._finish_ms = 20.0
        self._store_failing = False  # hydration failed last time (logged once per outage)

    def close(self) -> None:
        self._heavy_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ stages

    def _delay(self, stage: str) -> None:
        delay_ms = self.stage_delays_ms.get(stage)
        if delay_ms:
            time.sleep(delay_ms / 1000.0)

    def _estimate_heavy_ms(self, rows: int) -> float:
        if self._heavy_ms_per_row is None:
            return 0.0
        return self._heavy_fixed_ms + self._heavy_ms_per_row * rows

    def _learn_heavy_ms(self, rows: int, elapsed_ms: float) -> None:
        if rows < MIN_ROWS_TO_LEARN:
            return
        per_row = max(elapsed_ms - self._heavy_fixed_ms, 0.0) / rows
        prev = self._heavy_ms_per_row
        self._heavy_ms_per_row = per_row if prev is None else 0.8 * prev + 0.2 * per_row

    def _heavy(self, model: LoadedModel, X: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        cpu = time.thread_time()
        try:
            self._delay("heavy")
            probs = model.predict_heads(X)
            return ranking.weighted_score(probs, self.settings.ranking.weights)
        finally:
            # Learn from every call, abandoned ones included: their true cost is what makes
            # the next requests skip a heavy ranker that would not finish in time.
            self._learn_heavy_ms(len(X), (time.perf_counter() - started) * 1000.0)
            observe_cpu("heavy", cpu)
            self._heavy_busy.clear()

    def funnel_scores(self, ctx: PolicyContext) -> PolicyResult:
        """Light-ranker pruning, then the heavy ranker if it can finish before the deadline.

        Returns:
            Heavy scores of the pruned candidates, or light scores (``degraded``) when the
            heavy ranker was skipped or abandoned for lack of time.
        """
        model, X, timings = ctx.model, ctx.features, ctx.timings_ms
        if model is None:
            raise ValueError("the funnel needs a model; the scorer answers without one")
        n = X.shape[0]
        cap = self.settings.ranking.heavy_ranker_cap
        index = np.arange(n)
        # Always computed (well under a millisecond for 1,000 rows): it prunes, and it is the
        # answer ready to go if the heavy ranker runs out of time.
        t, cpu = time.perf_counter(), time.thread_time()
        self._delay("light")
        light = model.light_scores(X)
        keep = self._rows_within_aim(ctx, min(n, cap))
        if keep < n:
            index = light_keep(light, keep)
        timings["light"] = _observe("light", t)
        observe_cpu("light", cpu)

        def light_answer(reason: str) -> PolicyResult:
            metrics.DEGRADED.labels(reason=reason).inc()
            return PolicyResult(
                index=index, scores=light[index], model_version=model.version, degraded=True
            )

        time_left_ms = ctx.budget.left_ms() - max(PUBLISH_RESERVE_MS, 2.0 * self._finish_ms)
        if time_left_ms <= self._estimate_heavy_ms(len(index)):
            if self._heavy_ms_per_row is not None:
                # Decay while skipping, so the heavy ranker is tried again once the
                # slowdown that raised the estimate may have passed.
                self._heavy_ms_per_row *= 0.95
            return light_answer("budget")
        if self._heavy_busy.is_set():
            # The previous request's abandoned heavy call still runs: queueing behind it
            # would only make this request late too.
            return light_answer("heavy_busy")
        self._heavy_busy.set()
        t = time.perf_counter()
        future = self._heavy_pool.submit(self._heavy, model, X[index])
        try:
            heavy = future.result(timeout=max(time_left_ms, 0.0) / 1000.0)
        except concurrent.futures.TimeoutError:
            timings["heavy"] = _observe("heavy", t)
            log.warning(
                "heavy ranker abandoned for %s after %.0f ms",
                ctx.request.request_id,
                timings["heavy"],
            )
            return light_answer("timeout")
        except Exception:  # a failing heavy model still leaves the light ranker's answer
            timings["heavy"] = _observe("heavy", t)
            log.exception("heavy ranker failed for %s", ctx.request.request_id)
            return light_answer("heavy_error")
        timings["heavy"] = _observe("heavy", t)
        metrics.HEAVY_ROWS.observe(len(index))
        return PolicyResult(index=index, scores=heavy, model_version=model.version)

    def _rows_within_aim(self, ctx: PolicyContext, rows: int) -> int:
        """How many candidates the heavy ranker can score and still answer by the aim.

        The time until ``requested_at + serving.aim_ms`` is shared with the requests queued
        behind this one (``ctx.waiting``, polled with it, so their aims are about as near):
        this request's share minus the finishing reserve is the time
        the heavy ranker may take, and at the learned cost per row that fits so many rows
        (never fewer than ``ranking.heavy_ranker_floor``). Without a backlog everything fits
        and this changes nothing; with one, requests get cheaper until it drains, instead of
        each waiting behind full-cost ones until the deadline forces a light-only answer.
        """
        if self._heavy_ms_per_row is None or self._heavy_ms_per_row <= 0:
            return rows
        floor = self.settings.ranking.heavy_ranker_floor
        aim_s = (
            ctx.request.requested_at.timestamp()
            - self._clock_offset_s
            + self.settings.serving.aim_ms / 1000.0
        )
        left_ms = (aim_s - time.time()) * 1000.0 / (1 + ctx.waiting) - self._finish_ms
        if self._estimate_heavy_ms(rows) <= left_ms or rows <= floor:
            return rows
        fit = int((left_ms - self._heavy_fixed_ms) / self._heavy_ms_per_row)
        metrics.HEAVY_PRUNED_FOR_AIM.inc()
        return max(fit, floor)

    # ------------------------------------------------------------------ request

    def score(
        self, request: FeedRequest, waiting: int = 0, arrival: Arrival | None = None
    ) -> ScoredRequest:
        """Answer one validated feed request.

        Args:
            request: The request.
            waiting: Requests this process has already polled that queue behind this one
                (they share the time until the latency aim; see ``_rows_within_aim``).
            arrival: When the poll that returned it was called and returned; its waits
                (backlog, fetch, queued) then go to the feed's ``timings_ms`` and
                ``feedrank_serving_wait_seconds``.

        Raises:
            Exception: whatever hydration or a model raises; the consumer turns it into a
                dead letter for this request and carries on.
        """
        t_start = time.perf_counter()
        budget_ms = self.settings.serving.budget_ms
        requested_s = request.requested_at.timestamp()
        budget = Budget(deadline_s=requested_s - self._clock_offset_s + budget_ms / 1000.0)
        timings: dict[str, float] = {}
        if arrival is not None:
            timings.update(_waits(requested_s - self._clock_offset_s, arrival))

        if self.feed_cache is not None:
            cached = self.feed_cache.get(request.request_id)
            if cached is not None:
                metrics.REQUESTS.labels(outcome="replayed").inc()
                return ScoredRequest(
                    feed=RankedFeed.model_validate_json(cached), payload=cached, replayed=True
                )

        t, cpu = time.perf_counter(), time.thread_time()
        seen = self.feed_cache.seen(request.user_id) if self.feed_cache is not None else set()
        # dict.fromkeys keeps first occurrences in order: duplicates and seen tweets go.
        tweet_ids = [tid for tid in dict.fromkeys(request.candidate_tweet_ids) if tid not in seen]
        timings["candidates"] = _observe("candidates", t)

        arm = self.assign_arm(request)
        policy = self.policies.get(arm)
        if policy is None:
            raise ValueError(f"no ranking policy for arm {arm!r}")
        model = self.models.current

        # Already late on arrival (a backlog after an outage or a burst): the answer is a
        # miss whatever we do, so it is made the cheapest way — candidate order, no features,
        # no model — and the backlog drains instead of every later request missing too.
        expired = bool(tweet_ids) and budget.left_ms() <= 0
        # Why the answer is made without features and models, if it is: "expired", or
        # "online_store" when hydration failed (the store stopped, say): a feed in
        # candidate order, flagged degraded, rather than no feed.
        unscored = "expired" if expired else None
        t = time.perf_counter()
        X = np.empty((0, len(_FEATURE_INDEX)), dtype=np.float32)
        authors = np.empty(0, dtype=np.int64)
        if tweet_ids:
            try:
                if not expired:
                    self._delay("hydrate")
                    X = self.hydrator.hydrate(
                        request.user_id, tweet_ids, requested_s, request.device
                    )
                    timings["hydrate"] = _observe("hydrate", t)
                authors = np.asarray(self.hydrator.author_ids(tweet_ids))
                if self._store_failing:
                    log.info("online store answers again")
                    self._store_failing = False
            except Exception as exc:
                metrics.DEPENDENCY_ERRORS.labels(dependency="online_store").inc()
                if not self._store_failing:  # once per outage: every request fails in one
                    log.warning("hydration failed (%s): answering in candidate order", exc)
                self._store_failing = True
                X = np.empty((0, len(_FEATURE_INDEX)), dtype=np.float32)
                authors = np.full(len(tweet_ids), -1, dtype=np.int64)
                unscored = "online_store"
        observe_cpu("hydrate", cpu)  # with the candidates' dedupe and their authors
        ctx = PolicyContext(
            request=request,
            tweet_ids=np.asarray(tweet_ids, dtype=np.int64),
            author_ids=clean_author_ids(authors),
            features=X,
            model=model,
            budget=budget,
            timings_ms=timings,
            waiting=waiting,
        )
        if not tweet_ids:
            result = PolicyResult(
                np.empty(0, dtype=np.int64), np.empty(0), _version_label(model), model is None
            )
        elif unscored is not None:
            metrics.DEGRADED.labels(reason=unscored).inc()
            n = len(tweet_ids)
            result = PolicyResult(
                index=np.arange(n),
                scores=(n - np.arange(n, dtype=np.float64)) / n,  # candidate order
                model_version=FALLBACK_VERSION,
                degraded=True,
                log_features=False,
            )
        elif model is None and policy is champion_policy:
            # No champion (none trained yet, or the gate refused the first one): the old
            # system answers, flagged degraded under its own name, never an empty feed.
            metrics.DEGRADED.labels(reason="no_champion").inc()
            fallback = chronological_policy(self, ctx)
            result = PolicyResult(
                index=fallback.index,
                scores=fallback.scores,
                model_version=NO_CHAMPION_RANKER,
                degraded=True,
                log_features=False,
            )
        else:
            result = policy(self, ctx)

        t_finish = t = time.perf_counter()
        cpu = time.thread_time()
        self._delay("rank")
        order, final = ranking.rank(
            result.scores,
            None if unscored else ctx.author_ids[result.index],
            self.settings.ranking.author_diversity_floor,
            self.settings.ranking.top_k,
        )
        chosen = result.index[order]
        timings["rank"] = _observe("rank", t)
        cpu = observe_cpu("rank", cpu)

        served_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._clock_offset_s)
        missed = served_at.timestamp() - self._clock_offset_s > budget.deadline_s
        timings["total"] = (time.perf_counter() - t_start) * 1000.0
        items = [
            RankedItem(
                tweet_id=int(ctx.tweet_ids[i]),
                author_id=int(ctx.author_ids[i]),
                score=_finite(s),
                position=pos,
            )
            for pos, (i, s) in enumerate(zip(chosen, final, strict=True))
        ]
        feed = RankedFeed(
            request_id=request.request_id,
            user_id=request.user_id,
            model_version=result.model_version,
            arm=arm,
            degraded=result.degraded,
            items=items,
            requested_at=request.requested_at,
            served_at=served_at,
            deadline_at=dt.datetime.fromtimestamp(budget.deadline_s + self._clock_offset_s, dt.UTC),
            timings_ms={k: round(v, 3) for k, v in timings.items()},
            deadline_missed=missed,
        )
        impressions = self._impressions(feed, X, chosen, result.log_features)
        payload = encode(feed)
        finish_ms = (time.perf_counter() - t_finish) * 1000.0
        observe_cpu("encode_produce", cpu)  # the consumer adds the producer's share
        self._finish_ms = 0.8 * self._finish_ms + 0.2 * finish_ms
        metrics.REQUESTS.labels(outcome="scored").inc()
        metrics.END_TO_END_LATENCY.observe(max(served_at.timestamp() - requested_s, 0.0))
        if missed:
            metrics.DEADLINE_MISSES.inc()
        if self.on_scored is not None and not unscored:
            try:
                self.on_scored(ctx, result)
            except Exception:  # a shadow hook must never fail the served answer
                log.exception("on_scored hook failed for %s", request.request_id)
        return ScoredRequest(feed=feed, payload=payload, impressions=impressions, missed=missed)

    def _impressions(
        self, feed: RankedFeed, X: np.ndarray, chosen: np.ndarray, log_features: bool
    ) -> list[Impression]:
        sample = self.settings.serving.feature_log_sample
        vectors: list[list[float | None] | None] = [None] * len(feed.items)
        if log_features:
            logged = [
                k
                for k, item in enumerate(feed.items)
                if _sampled(feed.request_id, item.tweet_id, sample)
            ]
            for k, vector in zip(logged, _feature_lists(X[chosen[logged]]), strict=True):
                vectors[k] = vector
        return [
            Impression(
                request_id=feed.request_id,
                user_id=feed.user_id,
                tweet_id=item.tweet_id,
                author_id=item.author_id,
                position=item.position,
                served_at=feed.served_at,
                model_version=feed.model_version,
                arm=feed.arm,
                score=item.score,
                features=vector,
            )
            for item, vector in zip(feed.items, vectors, strict=True)
        ]


def _waits(requested_s: float, arrival: Arrival) -> dict[str, float]:
    """A request's waits before scoring, in ms, each also observed in ``WAIT``: backlog
    (requested → the poll was called), fetch (→ it returned), queued (→ now)."""
    now = time.time()
    called = max(arrival.poll_called_s, requested_s)
    waits_s = {
        "backlog": called - requested_s,
        "fetch": max(arrival.poll_returned_s - called, 0.0),
        "queued": max(now - arrival.poll_returned_s, 0.0),
    }
    for phase, seconds in waits_s.items():
        metrics.WAIT.labels(phase=phase).observe(seconds)
    return {phase: seconds * 1e3 for phase, seconds in waits_s.items()}


def _observe(stage: str, started: float) -> float:
    elapsed_s = time.perf_counter() - started
    metrics.STAGE_LATENCY.labels(stage=stage).observe(elapsed_s)
    return elapsed_s * 1000.0


def observe_cpu(stage: str, started: float) -> float:
    """Add this thread's CPU time since ``started`` (``time.thread_time()``) to ``stage``'s
    counter; returns the current ``thread_time``, the start of the next stage."""
    now = time.thread_time()
    metrics.STAGE_CPU.labels(stage=stage).inc(max(now - started, 0.0))
    return now


def _finite(value: Any) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


def light_keep(light: np.ndarray, keep: int) -> np.ndarray:
    """The funnel's cut: indices of the ``keep`` best light scores, in candidate order.

    Stable: ties keep candidate order, so a replay with the same time left prunes
    identically.
    """
    return np.sort(np.argsort(-np.asarray(light), kind="stable")[:keep])


def clean_author_ids(authors: np.ndarray) -> np.ndarray:
    """The hydrator's authors as int64, unknown ones (NaN or negative) as author 0.

    Unknown tweets share author 0 so the diversity discount still treats them as one group
    instead of crashing the request.
    """
    a = np.asarray(authors)
    if a.dtype.kind in "iu":
        return np.where(a >= 0, a, 0).astype(np.int64)
    a = a.astype(np.float64)
    return np.where(np.isfinite(a) & (a >= 0), a, 0).astype(np.int64)


def _feature_lists(rows: np.ndarray) -> list[list[float | None]]:
    """Feature rows as the impression logs them: Python floats, ``None`` where NaN (missing).

    One vectorised pass: a Python-level NaN test per value (~50 rows × 74 features per feed)
    was a visible share of the serving loop.
    """
    values = rows.astype(object)
    values[np.isnan(rows)] = None
    return values.tolist()


def _sampled(request_id: str, tweet_id: int, share: float) -> bool:
    """Deterministic sampling, so a replayed request logs the same impressions."""
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(f"{request_id}:{tweet_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share
