"""The one ranking score: weighted sum, author-diversity discount, top-K and NDCG."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from feedrank.ranking import (
    author_diversity,
    engagement_relevance,
    grouped_ndcg,
    rank,
    weighted_score,
)

pytestmark = pytest.mark.unit


def test_weighted_score_is_the_weighted_sum_of_heads() -> None:
    probs = {"like": np.array([0.5, 0.1]), "negative": np.array([0.0, 0.01])}
    score = weighted_score(probs, {"like": 0.5, "negative": -74.0})
    np.testing.assert_allclose(score, [0.25, 0.05 - 0.74])


def test_weighted_score_refuses_a_missing_head() -> None:
    with pytest.raises(ValueError, match="reply"):
        weighted_score({"like": np.ones(2)}, {"like": 1.0, "reply": 2.0})


def test_author_diversity_discounts_each_authors_kth_tweet_in_score_order() -> None:
    scores = np.array([1.0, 4.0, 2.0, 3.0, 5.0])
    authors = np.array([7, 7, 8, 7, 9])
    out = author_diversity(scores, authors, floor=0.25)
    # Author 7 in score order: 4.0 (k=0), 3.0 (k=1), 1.0 (k=2); others are first tweets.
    np.testing.assert_allclose(out, [1.0 * (0.75 * 0.25 + 0.25), 4.0, 2.0, 3.0 * 0.625, 5.0])


def test_author_diversity_pushes_repeated_negative_scores_down_not_up() -> None:
    out = author_diversity(np.array([2.0, -1.0, -1.0]), np.array([1, 1, 2]), floor=0.25)
    assert out[1] < -1.0  # second tweet of author 1 is penalised
    assert out[2] == -1.0  # first tweet of author 2 is untouched


def test_author_diversity_floor_one_is_a_no_op() -> None:
    scores = np.array([3.0, 2.0, 1.0])
    np.testing.assert_array_equal(author_diversity(scores, np.array([1, 1, 1]), 1.0), scores)


def test_rank_returns_top_k_after_the_discount() -> None:
    scores = np.array([10.0, 9.0, 8.0, 1.0])
    authors = np.array([1, 1, 2, 3])
    order, final = rank(scores, authors, floor=0.25, top_k=3)
    # The second tweet of author 1 (9 → 5.625) falls below author 2's 8.
    assert order.tolist() == [0, 2, 1]
    np.testing.assert_allclose(final, [10.0, 8.0, 5.625])


def test_grouped_ndcg_matches_sklearn_per_request() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), rng.integers(2, 25, 30))
    relevance = rng.integers(0, 3, groups.size).astype(float)
    scores = rng.random(groups.size)
    expected = [
        ndcg_score(relevance[groups == g][None], scores[groups == g][None], k=10)
        for g in np.unique(groups)
        if relevance[groups == g].sum() > 0
    ]
    assert grouped_ndcg(groups, relevance, scores, k=10) == pytest.approx(np.mean(expected))


def test_grouped_ndcg_rewards_the_right_order() -> None:
    groups = np.array(["a"] * 4 + ["b"] * 3)
    relevance = np.array([0, 3, 0, 1, 2, 0, 0], dtype=float)
    assert grouped_ndcg(groups, relevance, relevance) == pytest.approx(1.0)
    assert grouped_ndcg(groups, relevance, -relevance) < 0.7


def test_engagement_relevance_clips_negative_feedback_at_zero() -> None:
    labels = {"like": np.array([1.0, 1.0]), "negative": np.array([0.0, 1.0])}
    rel = engagement_relevance(labels, {"like": 0.5, "negative": -74.0})
    np.testing.assert_allclose(rel, [0.5, 0.0])
