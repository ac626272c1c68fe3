"""Experiment arms and shadow mode in the scorer, and on the real broker."""

from __future__ import annotations

import threading
import uuid

import pytest
from serving_helpers import (
    TableHydrator,
    TopicReader,
    fresh_group,
    make_request,
    send_requests,
    train_throwaway_model,
    with_serving,
)

from feedrank import ranking
from feedrank.config import ExperimentConfig, Settings
from feedrank.experiment_design import assign_arm
from feedrank.model_files import load_model
from feedrank.schemas import RankedFeed
from serving.consumer import run_serving
from serving.experiment_hooks import ShadowScorer, arm_of, experiment_policies, read_shadow_log
from serving.feed_cache import SqliteFeedCache
from serving.scorer import FALLBACK_VERSION, ModelSlot, Scorer


@pytest.fixture(scope="module")
def challenger(serve_settings: Settings) -> str:
    return train_throwaway_model(serve_settings, seed=2, version=f"shadow-{uuid.uuid4().hex[:6]}")


def _experiment(settings: Settings, **fields: object) -> Settings:
    return settings.model_copy(update={"experiment": ExperimentConfig(**fields)})


def _offline_top(model, tweets: list[int], user: int, settings: Settings) -> list[int]:
    hydrator = TableHydrator()
    X = hydrator.hydrate(user, tweets, 0.0, "mobile")
    scores = ranking.weighted_score(model.predict_heads(X), settings.ranking.weights)
    order, _ = ranking.rank(
        scores,
        hydrator.author_ids(tweets),
        settings.ranking.author_diversity_floor,
        settings.ranking.top_k,
    )
    return [tweets[i] for i in order]


@pytest.mark.unit
def test_arms_follow_the_stable_hash_and_pick_their_policy(
    serve_settings: Settings, champion: str, tmp_path
) -> None:
    arms = {"control": 0.5, "treatment": 0.5}
    settings = _experiment(serve_settings, arms=arms, salt="t1")
    cache = SqliteFeedCache(tmp_path / "cache.sqlite", ttl_s=600)
    scorer = Scorer(
        settings,
        ModelSlot(load_model(champion, settings)),
        TableHydrator(),
        cache,
        assign_arm=arm_of(settings),
        policies=experiment_policies(settings),
    )
    for user in range(12):
        feed = scorer.score(make_request(user, range(100, 130))).feed
        assert feed.arm == assign_arm(user, arms, "t1")
        expected_version = "chronological" if feed.arm == "control" else champion
        assert feed.model_version == expected_version
    cache.close()


@pytest.mark.unit
def test_unknown_arm_is_a_config_error(serve_settings: Settings) -> None:
    from feedrank.errors import FeedrankError

    settings = _experiment(serve_settings, arms={"control": 0.5, "mystery": 0.5})
    with pytest.raises(FeedrankError, match="mystery"):
        experiment_policies(settings)


@pytest.mark.integration
def test_shadow_challenger_rankings_never_reach_ranked_feeds(
    kafka: Settings, serve_settings: Settings, champion: str, challenger: str, producer
) -> None:
    base = serve_settings.model_copy(update={"kafka": kafka.kafka})
    settings = fresh_group(_experiment(base, challenger_version=challenger, shadow=True))
    settings = with_serving(settings, feature_log_sample=0.0, budget_ms=400)
    champion_model = load_model(champion, settings)
    shadow = ShadowScorer(settings, load_model(challenger, settings))
    scorer = Scorer(
        settings,
        ModelSlot(champion_model),
        TableHydrator(),
        SqliteFeedCache(settings.paths.home / f"cache-{uuid.uuid4().hex}.sqlite", ttl_s=600),
        on_scored=shadow,
    )
    tweets = list(range(500, 560))
    reader = TopicReader(settings, "ranked_feeds")
    stop = threading.Event()
    loop = threading.Thread(
        target=run_serving, args=(settings,), kwargs={"stop_event": stop, "scorer": scorer}
    )
    loop.start()
    try:
        # One warm-up round trip: requests stamped before the group joined would be past
        # their 300 ms deadline and answered by the fallback, not by a model.
        warm = make_request(999, tweets)
        send_requests(producer, [warm])
        assert reader.read(1, timeout_s=120, accept=lambda v: warm.request_id.encode() in v)
        requests = [make_request(user, tweets) for user in range(30)]
        wanted = {r.request_id for r in requests}
        send_requests(producer, requests)
        values = reader.read(len(requests), timeout_s=120, accept=lambda v: b'"request_id"' in v)
    finally:
        stop.set()
        loop.join(timeout=60)
        reader.close()
    feeds = [RankedFeed.model_validate_json(v) for v in values]
    feeds = [f for f in feeds if f.request_id in wanted]
    assert {f.request_id for f in feeds} == wanted
    # Under heavy machine load some requests may miss the budget (fallback, no model) or be
    # degraded to the light ranker; neither is ever the challenger.
    assert {f.model_version for f in feeds} <= {champion, FALLBACK_VERSION}
    modelled = [f for f in feeds if f.model_version == champion]
    assert modelled
    by_id = {r.request_id: r for r in requests}
    for feed in modelled:
        if feed.degraded:  # answered by the light ranker under load: still the champion's
            continue
        served = [item.tweet_id for item in feed.items]
        assert served == _offline_top(
            champion_model, tweets, by_id[feed.request_id].user_id, settings
        )
    records = read_shadow_log(shadow.path)
    assert {r["request_id"] for r in records} >= {f.request_id for f in modelled}
    assert all(r["challenger"] == challenger for r in records)
    # The challenger really ranks differently, so its order would have been visible.
    assert min(r["top10_overlap"] for r in records) < 1.0
    summary = shadow.summary()
    assert summary["requests"] >= len(modelled) and summary["latency_p50_ms"] > 0


@pytest.mark.unit
def test_counterfactual_recorder_scores_every_policy_on_the_same_request(
    serve_settings: Settings, champion: str
) -> None:
    import numpy as np

    from feedrank.feature_spec import model_features
    from feedrank.simulator.world import World
    from serving.counterfactual import (
        COUNTERFACTUAL_POLICIES,
        CounterfactualRecorder,
        CounterfactualScoring,
        counterfactual_summary,
        read_counterfactual_records,
    )
    from serving.experiment_hooks import experiment_hooks
    from serving.scorer import Budget, PolicyContext, PolicyResult

    settings = _experiment(serve_settings, counterfactual=True)
    simulator = settings.simulator.model_copy(update={"users": 80})
    settings = settings.model_copy(update={"simulator": simulator})
    recorder = experiment_hooks(settings)["on_scored"]
    assert isinstance(recorder, CounterfactualRecorder)
    world = World.build(simulator)
    model = load_model(champion, settings)
    columns = {name: i for i, name in enumerate(model_features())}
    rng = np.random.default_rng(0)
    request_ids = []
    for user in range(12):
        n = 200
        request = make_request(user, range(1, n + 1))
        now_s = request.requested_at.timestamp()
        X = rng.normal(size=(n, len(columns))).astype(np.float32)
        X[:, columns["tweet_topic"]] = rng.integers(0, simulator.topics, n)
        X[:, columns["tweet_has_media"]] = rng.random(n) < 0.3
        X[:, columns["tweet_has_link"]] = rng.random(n) < 0.2
        X[:, columns["tweet_created_ts"]] = now_s - rng.uniform(60, 48 * 3600, n)
        ctx = PolicyContext(
            request=request,
            tweet_ids=np.arange(1, n + 1, dtype=np.int64),
            author_ids=rng.choice(world.author_ids, n),
            features=X,
            model=model,
            budget=Budget(deadline_s=now_s + 1.0),
            timings_ms={},
        )
        recorder(ctx, PolicyResult(np.arange(n), np.zeros(n), "chronological"))
        request_ids.append(request.request_id)
    recorder.flush()
    records = read_counterfactual_records(
        settings.paths.reports / "counterfactual", set(request_ids)
    )
    assert [r["request_id"] for r in records] == request_ids
    for record in records:
        assert set(record["expected_weighted_engagements"]) == set(COUNTERFACTUAL_POLICIES)
    summary = counterfactual_summary(settings, set(request_ids[:10]))
    assert summary["oracle"]["requests"] == 10
    assert summary["oracle"]["share_of_oracle"] == pytest.approx(1.0)
    # Ranking by the truth earns more than newest-first on the same candidates.
    assert summary["oracle"]["mean"] > 1.2 * summary["chronological"]["mean"]

    # The champion policy is the served funnel: the light ranker's cut, the heavy heads on it.
    ranking = settings.ranking.model_copy(update={"heavy_ranker_cap": 50})
    scoring = CounterfactualScoring(settings.model_copy(update={"ranking": ranking}))
    scores = scoring.policy_scores(ctx)
    kept = np.flatnonzero(np.isfinite(scores["champion"]))
    assert set(kept) == set(np.argsort(-scores["light"], kind="stable")[:50])
    np.testing.assert_allclose(scores["champion"][kept], model.weighted_scores(X[kept]))
