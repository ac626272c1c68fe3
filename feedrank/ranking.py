"""The one ranking score: weighted head probabilities, then the author-diversity discount.

Evaluation (``jobs/evaluate.py``) and the serving scorer both import these functions, so the
order a model is judged on offline is the order it serves online.

* :func:`weighted_score` — ``Σ_h w_h · P(h)`` (Twitter's heavy-ranker combination).
* :func:`author_diversity` — ``score × ((1 − f)·0.5^k + f)`` for an author's k-th tweet.
* :func:`rank` — both, then the top-K order.
* :func:`engagement_relevance`, :func:`grouped_ndcg` — per-request NDCG@k of an order
  against what users actually did.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.metrics import ndcg_score


def weighted_score(
    head_probs: Mapping[str, np.ndarray], weights: Mapping[str, float]
) -> np.ndarray:
    """The weighted-engagement score ``Σ_h w_h · p_h`` of every candidate.

    Args:
        head_probs: Calibrated probability per head, each of shape ``(n,)``.
        weights: Weight per head; every weighted head must be present in ``head_probs``.

    Returns:
        ``float64`` array of shape ``(n,)``.

    Raises:
        ValueError: A weighted head has no probabilities, or the arrays disagree in length.
    """
    missing = [h for h in weights if h not in head_probs]
    if missing:
        raise ValueError(f"no probabilities for weighted head(s) {missing}")
    score: np.ndarray | None = None
    for head, weight in weights.items():
        p = np.asarray(head_probs[head], dtype=np.float64)
        if score is None:
            score = weight * p
        elif p.shape != score.shape:
            raise ValueError(f"head {head!r} has shape {p.shape}, expected {score.shape}")
        else:
            score += weight * p
    return np.zeros(0) if score is None else score


def diversity_multiplier(k: np.ndarray, floor: float) -> np.ndarray:
    """``(1 − f)·0.5^k + f``: 1 for an author's first tweet, decaying towards ``f``."""
    return (1.0 - floor) * np.power(0.5, k) + floor


def author_diversity(scores: np.ndarray, author_ids: np.ndarray, floor: float) -> np.ndarray:
    """Discount each author's repeated tweets: the k-th (k = 0 first) by ``(1 − f)·0.5^k + f``.

    k counts the author's tweets ranked above this one by the *undiscounted* score (ties
    broken by input order), as in Twitter's home mixer.

    Negative scores (the negative-feedback head outweighs the rest) are *divided* by the
    multiplier instead of multiplied: multiplying would pull a repeated author's bad tweet
    towards zero, i.e. promote it. Dividing keeps the rule's intent for every sign — a
    repeated author always moves down, never up.

    Args:
        scores: Score per candidate, shape ``(n,)``.
        author_ids: Author per candidate, shape ``(n,)``.
        floor: ``f`` in ``[0, 1]``; ``f = 1`` disables the discount.

    Returns:
        The discounted scores, in the input order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    author_ids = np.asarray(author_ids)
    if scores.shape != author_ids.shape or scores.ndim != 1:
        raise ValueError(
            f"scores {scores.shape} and author_ids {author_ids.shape} must be equal 1-d shapes"
        )
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"author diversity floor must be in [0, 1], got {floor}")
    n = scores.shape[0]
    if n == 0:
        return scores.copy()
    order = np.argsort(-scores, kind="stable")
    sorted_authors = author_ids[order]
    # k = rank of each tweet within its author's group, in score order (vectorised cumcount).
    group_order = np.argsort(sorted_authors, kind="stable")
    grouped = sorted_authors[group_order]
    starts = np.r_[True, grouped[1:] != grouped[:-1]]
    group_start_idx = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    k_sorted = np.empty(n, dtype=np.int64)
    k_sorted[group_order] = np.arange(n) - group_start_idx
    k = np.empty(n, dtype=np.int64)
    k[order] = k_sorted
    mult = diversity_multiplier(k, floor)
    return np.where(scores >= 0, scores * mult, scores / mult)


def rank(
    scores: np.ndarray,
    author_ids: np.ndarray | None = None,
    floor: float | None = None,
    top_k: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The served order: author-diversity discount (if authors are given), then top-K.

    Args:
        scores: Weighted score per candidate (see :func:`weighted_score`).
        author_ids: Author per candidate; ``None`` skips the discount.
        floor: Diversity floor ``f`` (``settings.ranking.author_diversity_floor``); required
            with ``author_ids``.
        top_k: Keep this many (``settings.ranking.top_k``); ``None`` keeps all.

    Returns:
        ``(indices, final_scores)``: candidate indices best first, and their final scores.
    """
    final = np.asarray(scores, dtype=np.float64)
    if author_ids is not None:
        if floor is None:
            raise ValueError("rank() needs the diversity floor when author_ids are given")
        final = author_diversity(final, author_ids, floor)
    order = np.argsort(-final, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return order, final[order]


def engagement_relevance(
    labels: Mapping[str, np.ndarray], weights: Mapping[str, float]
) -> np.ndarray:
    """Graded relevance of each impression from what the user did: ``max(0, Σ_h w_h·y_h)``.

    NDCG needs non-negative gains, so an impression whose negative feedback outweighs its
    positive engagements counts as irrelevant (0) rather than below irrelevant.
    """
    return np.maximum(weighted_score(labels, weights), 0.0)


def grouped_ndcg(
    group_ids: np.ndarray,
    relevance: np.ndarray,
    scores: np.ndarray,
    k: int = 10,
) -> float:
    """Mean per-request NDCG@k of ordering each request's rows by ``scores``.

    Requests with no relevant row (all gains 0) have no defined NDCG and are skipped; every
    ranker compared on the same rows skips the same requests. Ties in ``scores`` are
    averaged (sklearn's default), so a constant score earns no credit from row order.

    Args:
        group_ids: Request id per row.
        relevance: Non-negative gain per row (see :func:`engagement_relevance`).
        scores: Ranking score per row; higher ranks first.
        k: Cut-off.

    Returns:
        The mean NDCG@k over requests with at least one relevant row (NaN if none).
    """
    group_ids = np.asarray(group_ids)
    relevance = np.asarray(relevance, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if not (group_ids.shape == relevance.shape == scores.shape):
        raise ValueError("group_ids, relevance and scores must have the same shape")
    if np.any(relevance < 0):
        raise ValueError("NDCG relevance must be non-negative")
    if np.any(~np.isfinite(scores)):
        raise ValueError("ranking scores must be finite")
    _, inverse, counts = np.unique(group_ids, return_inverse=True, return_counts=True)
    # sklearn wants equal-length lists: pad each request to the longest one with rows of gain
    # 0 and score -inf; padding sorts last and adds nothing to either DCG or the ideal DCG.
    n_groups, width = counts.shape[0], int(counts.max(initial=0))
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    col = np.arange(order.shape[0]) - np.repeat(starts, counts)
    true = np.zeros((n_groups, width))
    pred = np.full((n_groups, width), -np.inf)
    true[inverse[order], col] = relevance[order]
    pred[inverse[order], col] = scores[order]
    keep = true.sum(axis=1) > 0
    if not keep.any():
        return float("nan")
    true, pred = true[keep], pred[keep]
    if width == 1:
        return 1.0  # a one-row request with a relevant row is trivially ordered perfectly
    # -inf would break sklearn's tie handling arithmetic; any value below every score works.
    pred[np.isneginf(pred)] = np.min(scores) - 1.0
    return float(ndcg_score(true, pred, k=k))
