"""The scorer core without Kafka: ordering, budget, replay, seen dedupe, arms, impressions."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from prometheus_client import REGISTRY
from serving_helpers import TableHydrator, make_request, with_serving

from feedrank import ranking
from feedrank.config import Settings
from feedrank.model_files import load_model
from feedrank.schemas import Impression, RankedFeed, ServedImpressions, decode, encode
from serving.consumer import impression_messages
from serving.feed_cache import SqliteFeedCache
from serving.scorer import (
    CONTROL_ARM,
    FALLBACK_VERSION,
    TREATMENT_ARM,
    ModelSlot,
    Scorer,
    _sampled,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def scorer_parts(serve_settings: Settings, champion: str, tmp_path):
    model = load_model(champion, serve_settings)
    cache = SqliteFeedCache(tmp_path / "cache.sqlite", ttl_s=600)
    yield serve_settings, model, cache
    cache.close()


def offline_order(model, X: np.ndarray, authors: np.ndarray, settings: Settings) -> np.ndarray:
    scores = ranking.weighted_score(model.predict_heads(X), settings.ranking.weights)
    order, _ = ranking.rank(
        scores, authors, settings.ranking.author_diversity_floor, settings.ranking.top_k
    )
    return order


def test_order_equals_offline_scoring_and_impressions_carry_features(scorer_parts) -> None:
    settings, model, cache = scorer_parts
    hydrator = TableHydrator()
    scorer = Scorer(settings, ModelSlot(model), hydrator, cache)
    tweets = list(range(100, 160))
    request = make_request(7, tweets + tweets[:5])  # duplicates are dropped
    answer = scorer.score(request)

    X = hydrator.hydrate(7, tweets, 0.0, "mobile")
    expected = [tweets[i] for i in offline_order(model, X, hydrator.author_ids(tweets), settings)]
    assert [item.tweet_id for item in answer.feed.items] == expected
    assert answer.feed.model_version == model.version
    assert not answer.feed.degraded and not answer.missed
    assert answer.feed.arm == TREATMENT_ARM
    assert {"hydrate", "heavy", "rank", "total"} <= set(answer.feed.timings_ms)
    assert [imp.position for imp in answer.impressions] == list(range(len(expected)))
    first = answer.impressions[0]
    row = X[tweets.index(first.tweet_id)]
    assert first.features is not None and first.features[1] is None  # NaN -> null
    assert np.allclose([v for v in first.features if v is not None], row[~np.isnan(row)])
    # The logged vectors survive the wire (NaN as null) and validate at the boundary.
    logged = ServedImpressions(impressions=answer.impressions)
    assert decode("impressions", encode(logged)).lake_rows() == answer.impressions


def test_light_ranker_prunes_to_the_heavy_cap(scorer_parts) -> None:
    settings, model, cache = scorer_parts
    settings = settings.model_copy(
        update={"ranking": settings.ranking.model_copy(update={"heavy_ranker_cap": 20})}
    )
    hydrator = TableHydrator()
    scorer = Scorer(settings, ModelSlot(model), hydrator, cache)
    tweets = list(range(1000, 1080))
    answer = scorer.score(make_request(3, tweets))
    X = hydrator.hydrate(3, tweets, 0.0, "mobile")
    kept = np.sort(np.argsort(-model.light_scores(X), kind="stable")[:20])
    served = {item.tweet_id for item in answer.feed.items}
    assert served <= {tweets[i] for i in kept}
    assert len(served) == 20 and "light" in answer.feed.timings_ms


def test_backlogged_request_is_heavy_scored_on_fewer_candidates(scorer_parts) -> None:
    settings, model, cache = scorer_parts
    settings = with_serving(settings, aim_ms=50)
    settings = settings.model_copy(
        update={"ranking": settings.ranking.model_copy(update={"heavy_ranker_floor": 20})}
    )
    hydrator = TableHydrator()
    scorer = Scorer(settings, ModelSlot(model), hydrator, cache)
    tweets = list(range(3000, 3080))
    on_time = scorer.score(make_request(5, tweets))  # teaches the scorer the cost per row
    assert not on_time.feed.degraded
    pruned_before = REGISTRY.get_sample_value("feedrank_serving_heavy_pruned_for_aim_total")
    # Waited 150 ms in a backlog: past the 50 ms aim, well inside the 300 ms deadline.
    late = make_request(6, tweets, requested_at=dt.datetime.now(dt.UTC) - dt.timedelta(0, 0.15))
    answer = scorer.score(late)
    assert not answer.feed.degraded and not answer.missed
    assert answer.feed.model_version == model.version
    X = hydrator.hydrate(6, tweets, 0.0, "mobile")
    kept = np.sort(np.argsort(-model.light_scores(X), kind="stable")[:20])
    served = [item.tweet_id for item in answer.feed.items]
    assert len(served) == 20 and set(served) == {tweets[i] for i in kept}
    # ... and ranked by the heavy ranker, not the light one.
    sub = X[kept]
    order = offline_order(model, sub, hydrator.author_ids([tweets[i] for i in kept]), settings)
    assert served == [tweets[kept[i]] for i in order]
    pruned_after = REGISTRY.get_sample_value("feedrank_serving_heavy_pruned_for_aim_total")
    assert pruned_after == pruned_before + 1


def test_requests_queued_behind_share_the_time_to_the_aim(scorer_parts) -> None:
    settings, model, cache = scorer_parts
    settings = with_serving(settings, aim_ms=50)
    settings = settings.model_copy(
        update={"ranking": settings.ranking.model_copy(update={"heavy_ranker_floor": 10})}
    )
    scorer = Scorer(settings, ModelSlot(model), TableHydrator(), cache)
    tweets = list(range(5000, 5040))  # fewer than top_k: every scored one is served
    scorer.score(make_request(5, tweets))  # teaches the scorer the cost per row
    alone = scorer.score(make_request(6, tweets))
    assert len(alone.feed.items) == len(tweets)  # on time and nothing queued: all scored
    # Just as fresh, but 500 requests were polled with it: its share of the 50 ms is tiny.
    crowded = scorer.score(make_request(7, tweets), waiting=500)
    assert not crowded.feed.degraded and crowded.feed.model_version == model.version
    assert len(crowded.feed.items) == 10


def test_slow_heavy_ranker_degrades_to_light_within_deadline(scorer_parts) -> None:
    settings, model, cache = scorer_parts
    hydrator = TableHydrator()
    scorer = Scorer(settings, ModelSlot(model), hydrator, cache, stage_delays_ms={"heavy": 2000})
    tweets = list(range(200, 240))
    answer = scorer.score(make_request(11, tweets))
    assert answer.feed.degraded
    assert not answer.missed and not answer.feed.deadline_missed
    assert answer.feed.served_at <= answer.feed.deadline_at
    light = model.light_scores(hydrator.hydrate(11, tweets, 0.0, "mobile"))
    order, _ = ranking.rank(
        light, hydrator.author_ids(tweets), settings.ranking.author_diversity_floor, 50
    )
    assert [item.tweet_id for item in answer.feed.items] == [tweets[i] for i in order]
    # The abandoned heavy call still runs: the next request does not queue behind it.
    second = scorer.score(make_request(12, tweets))
    assert second.feed.degraded and not second.missed
    scorer.close()


def test_request_already_past_its_deadline_is_a_counted_miss(scorer_parts) -> None:
    settings, model, cache = scorer_parts
    hydrator = TableHydrator()
    scorer = Scorer(settings, ModelSlot(model), hydrator, cache)
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    answer = scorer.score(make_request(5, range(300, 320), requested_at=stale))
    assert answer.missed and answer.feed.deadline_missed
    assert answer.feed.served_at > answer.feed.deadline_at
    # Late on arrival: answered the cheapest way (no hydration, no model) and marked so.
    assert answer.feed.degraded and answer.feed.model_version == FALLBACK_VERSION
    assert hydrator.calls == 0
    assert [i.tweet_id for i in answer.feed.items] == list(range(300, 320))
    assert all(imp.features is None for imp in answer.impressions)


def test_replay_and_seen_dedupe_through_the_feed_cache(scorer_parts) -> None:
    settings, model, cache = scorer_parts
    hydrator = TableHydrator()
    scorer = Scorer(settings, ModelSlot(model), hydrator, cache)
    settings_small = with_serving(settings)
    assert settings_small.serving.feed_cache_ttl_s > 0
    request = make_request(21, range(400, 480))
    first = scorer.score(request)
    cache.put_many([(first.feed, first.payload)])

    again = scorer.score(request)
    assert again.replayed and again.payload == first.payload and again.impressions == []

    served = {item.tweet_id for item in first.feed.items}
    follow_up = scorer.score(make_request(21, range(400, 480)))
    assert not ({item.tweet_id for item in follow_up.feed.items} & served)
    assert len(follow_up.feed.items) == 80 - len(served)
    # Another user has not seen them.
    other = scorer.score(make_request(22, range(400, 480)))
    assert {item.tweet_id for item in other.feed.items} & served


def test_arm_policy_extension_point_serves_chronological_control(scorer_parts) -> None:
    settings, model, cache = scorer_parts
    hydrator = TableHydrator()
    scorer = Scorer(
        settings,
        ModelSlot(model),
        hydrator,
        cache,
        assign_arm=lambda r: CONTROL_ARM if r.user_id % 2 else TREATMENT_ARM,
    )
    tweets = list(range(500, 530))
    control = scorer.score(make_request(31, tweets))
    X = hydrator.hydrate(31, tweets, 0.0, "mobile")
    created_col = 0
    from feedrank.feature_spec import model_features

    created_col = model_features().index("tweet_created_ts")
    newest_first = sorted(tweets, key=lambda t: -X[tweets.index(t), created_col])
    assert control.feed.arm == CONTROL_ARM
    assert control.feed.model_version == "chronological"
    # Authors still get the diversity discount; with it off the order is purely by time.
    assert {i.tweet_id for i in control.feed.items} == set(newest_first)
    assert all(imp.features is None and imp.arm == CONTROL_ARM for imp in control.impressions)
    treatment = scorer.score(make_request(32, tweets))
    assert treatment.feed.arm == TREATMENT_ARM and treatment.feed.model_version == model.version


def test_empty_candidate_set_after_dedupe_is_an_empty_feed(scorer_parts) -> None:
    settings, model, cache = scorer_parts
    scorer = Scorer(settings, ModelSlot(model), TableHydrator(), cache)
    first = scorer.score(make_request(41, [1, 2, 3]))
    cache.put_many([(first.feed, first.payload)])
    second = scorer.score(make_request(41, [3, 2, 1]))
    assert second.feed.items == [] and second.impressions == []
    assert RankedFeed.model_validate_json(second.payload) == second.feed


def test_sampled_impressions_log_their_own_rows(scorer_parts) -> None:
    settings, model, cache = scorer_parts
    settings = with_serving(settings, feature_log_sample=0.5)
    hydrator = TableHydrator()
    scorer = Scorer(settings, ModelSlot(model), hydrator, cache)
    tweets = list(range(600, 660))
    answer = scorer.score(make_request(51, tweets))
    X = hydrator.hydrate(51, tweets, 0.0, "mobile")
    logged = [imp for imp in answer.impressions if imp.features is not None]
    assert [imp.tweet_id for imp in logged] == [
        imp.tweet_id for imp in answer.impressions if _sampled(imp.request_id, imp.tweet_id, 0.5)
    ]
    assert 0 < len(logged) < len(answer.impressions)
    for imp in logged:
        row = X[tweets.index(imp.tweet_id)]
        assert imp.features == [None if np.isnan(v) else float(v) for v in row]
    scorer.close()


def test_feature_log_sampling_is_deterministic() -> None:
    picks = [_sampled("req-1", t, 0.3) for t in range(2000)]
    assert picks == [_sampled("req-1", t, 0.3) for t in range(2000)]
    assert 0.25 < sum(picks) / len(picks) < 0.35
    assert all(_sampled("r", t, 1.0) for t in range(10))
    assert not any(_sampled("r", t, 0.0) for t in range(10))


def test_impression_with_missing_features_round_trips() -> None:
    imp = Impression(
        request_id="r",
        user_id=1,
        tweet_id=2,
        author_id=3,
        position=0,
        served_at=dt.datetime.now(dt.UTC),
        model_version="v",
        features=[1.5, None, 2.0],
    )
    assert decode("impressions", encode(ServedImpressions(impressions=[imp]))).lake_rows() == [imp]


def test_a_feed_too_large_for_one_message_is_split_without_losing_an_impression() -> None:
    at = dt.datetime.now(dt.UTC)
    served = [
        Impression(
            request_id="r",
            user_id=1,
            tweet_id=100 + i,
            author_id=3,
            position=i,
            served_at=at,
            model_version="v",
            features=[0.25] * 40,
        )
        for i in range(50)
    ]
    (whole,) = impression_messages(served, 1_000_000)
    parts = impression_messages(served, len(whole) // 3)
    assert len(parts) > 3 and all(len(part) <= len(whole) // 3 for part in parts)
    rows = [row for part in parts for row in decode("impressions", part).lake_rows()]
    assert rows == served


def test_failing_heavy_model_falls_back_to_the_light_ranker(scorer_parts) -> None:
    settings, model, cache = scorer_parts

    def broken(X, calibrated=True):
        raise RuntimeError("booster exploded")

    model.predict_heads = broken
    scorer = Scorer(settings, ModelSlot(model), TableHydrator(), cache)
    answer = scorer.score(make_request(61, range(600, 630)))
    assert answer.feed.degraded and not answer.missed
    assert len(answer.feed.items) == 30


def test_a_tiny_request_does_not_teach_a_cost_that_skips_the_heavy_ranker(scorer_parts) -> None:
    # Every heavy call takes 30 ms more. Learned from a one-candidate request, that would be
    # 29 ms per row: 200 candidates would look like 6 s and the next request would be
    # answered by the light ranker alone.
    settings, model, cache = scorer_parts
    scorer = Scorer(
        settings, ModelSlot(model), TableHydrator(), cache, stage_delays_ms={"heavy": 30}
    )
    probe = scorer.score(make_request(5, [6000]))
    assert not probe.feed.degraded and "heavy" in probe.feed.timings_ms
    full = scorer.score(make_request(6, list(range(6100, 6300))))
    assert not full.feed.degraded and "heavy" in full.feed.timings_ms
    assert full.feed.model_version == model.version
    scorer.close()


def test_shifted_clock_serves_on_the_simulated_day_with_real_deadlines(scorer_parts) -> None:
    settings, model, cache = scorer_parts
    days_ahead = 3
    shifted = settings.model_copy(
        update={"clock": settings.clock.model_copy(update={"offset_s": days_ahead * 86_400})}
    )
    scorer = Scorer(shifted, ModelSlot(model), TableHydrator(), cache)
    # Requested "now" on the simulated day, three days after the wall clock's.
    requested = dt.datetime.now(dt.UTC) + dt.timedelta(days=days_ahead)
    answer = scorer.score(make_request(5, range(300, 340), requested_at=requested))
    feed = answer.feed
    assert not answer.missed and not feed.degraded and feed.model_version == model.version
    # Event times on the simulated day; the deadline is the budget after the request.
    assert dt.timedelta(0) <= feed.served_at - requested < dt.timedelta(seconds=5)
    budget = dt.timedelta(milliseconds=settings.serving.budget_ms)
    assert abs(feed.deadline_at - (requested + budget)) < dt.timedelta(milliseconds=1)
    # Without the shift the same request is far in the future: never late, but its served_at
    # would be on the wall clock's day, days before it was requested.
    plain = Scorer(settings, ModelSlot(model), TableHydrator(), cache)
    other = plain.score(make_request(6, range(300, 340), requested_at=requested)).feed
    assert other.served_at < requested - dt.timedelta(days=days_ahead - 1)
