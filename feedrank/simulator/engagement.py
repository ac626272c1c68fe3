"""The simulator's ground truth: the true probability of every engagement head.

For an impression of tweet *t* (author *a*, topic *k*) shown to user *u* at position *pos* of a
feed requested at time *τ* on device *d*, each head *h* has a logit

.. code-block:: text

    relevance = 1.0·interest[u, k] + 1.0·affinity(u, a) + 0.7·follows(u, a) + 0.6·quality[a]
    logit_h   = bias_h
              + relevance_h · relevance
              + media_h · has_media + link_h · has_link
              − freshness_h · log1p(age_hours(τ, t))
              − position_h · log1p(pos)
              + active_h · cos(π · hours_from_peak(u, τ) / 12)
              + weekend_h · is_weekend(τ) + holiday_h · exp(−days_to_holiday(τ) / 2)
              + device_h[d]
    p_h       = sigmoid(logit_h)

``interest`` (user×topic) and ``affinity`` (user×author, a hash of the pair) are latent: no
feature carries them, but a model can estimate them from the user's past engagements with
the topic (``ut_*``) and the author (``ua_*``). ``hours_from_peak`` is the circular distance
between the request's UTC hour and the user's peak activity hour (set by the user's time
zone), ``days_to_holiday`` is :func:`feedrank.context.days_to_nearest_holiday` (the calendar the
context features use: the `holidays` package, no end year).

Heads are drawn jointly through a Gaussian copula: one shared standard-normal "mood" per
impression with loading ``mood_h`` (negative for the negative-feedback head), so a reply
makes a like more likely while each head's marginal probability stays exactly ``p_h`` — the
oracle stays the true probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, ndtr

from feedrank.config import HEADS


@dataclass(frozen=True)
class HeadCoefficients:
    """The coefficients of one head's logit (see the module docstring)."""

    bias: float
    relevance: float
    media: float
    link: float
    freshness: float
    position: float
    active: float
    weekend: float
    holiday: float
    device: tuple[float, float, float]  # mobile, web, tablet (feedrank.schemas.DEVICES order)
    mood: float
    delay_median_s: float


COEFFICIENTS: dict[str, HeadCoefficients] = {
    "like": HeadCoefficients(
        bias=-5.05,
        relevance=1.0,
        media=0.35,
        link=-0.1,
        freshness=0.30,
        position=0.06,
        active=0.45,
        weekend=0.15,
        holiday=0.4,
        device=(0.15, -0.1, 0.05),
        mood=0.6,
        delay_median_s=90.0,
    ),
    "reply": HeadCoefficients(
        bias=-7.8,
        relevance=1.25,
        media=0.0,
        link=-0.2,
        freshness=0.40,
        position=0.06,
        active=0.55,
        weekend=0.1,
        holiday=0.3,
        device=(-0.1, 0.25, -0.2),
        mood=0.6,
        delay_median_s=240.0,
    ),
    "retweet": HeadCoefficients(
        bias=-7.3,
        relevance=1.1,
        media=0.45,
        link=0.2,
        freshness=0.35,
        position=0.06,
        active=0.4,
        weekend=0.2,
        holiday=0.5,
        device=(0.1, 0.0, 0.0),
        mood=0.6,
        delay_median_s=150.0,
    ),
    "click": HeadCoefficients(
        bias=-4.75,
        relevance=0.75,
        media=0.3,
        link=0.9,
        freshness=0.20,
        position=0.05,
        active=0.3,
        weekend=-0.1,
        holiday=0.2,
        device=(-0.15, 0.3, 0.1),
        mood=0.4,
        delay_median_s=30.0,
    ),
    "negative": HeadCoefficients(
        bias=-6.2,
        relevance=-0.9,
        media=0.1,
        link=0.3,
        freshness=-0.05,
        position=0.0,
        active=-0.2,
        weekend=0.0,
        holiday=0.0,
        device=(0.1, -0.1, 0.0),
        mood=-0.4,
        delay_median_s=60.0,
    ),
}
assert tuple(COEFFICIENTS) == HEADS

# The share of engagements per head the default world produces must fall in these ranges
# (likes and clicks a few percent, replies and retweets under 1%, negative 0.1–0.5%).
HEAD_RATE_RANGES: dict[str, tuple[float, float]] = {
    "like": (0.015, 0.08),
    "reply": (0.001, 0.01),
    "retweet": (0.001, 0.01),
    "click": (0.015, 0.08),
    "negative": (0.001, 0.005),
}
# Engagement delays are log-normal around the head's median; with this spread a couple of
# percent land after a 1-hour attribution window.
DELAY_LOG_SIGMA = 1.6
# Relevance weights: the latent parts of the logit shared by every head.
INTEREST_WEIGHT = 1.0
AFFINITY_WEIGHT = 1.0
FOLLOWS_WEIGHT = 0.7
QUALITY_WEIGHT = 0.6
HOLIDAY_DECAY_DAYS = 2.0

# Names of the arrays the formula consumes, in a stable order (the "latent inputs").
LATENT_INPUTS: tuple[str, ...] = (
    "interest",
    "affinity",
    "follows",
    "author_quality",
    "has_media",
    "has_link",
    "tweet_age_hours",
    "position",
    "hours_from_peak",
    "is_weekend",
    "days_to_holiday",
    "device_code",
)


def relevance(
    interest: np.ndarray, affinity: np.ndarray, follows: np.ndarray, author_quality: np.ndarray
) -> np.ndarray:
    """The shared latent relevance of a (user, tweet) pair."""
    return (
        INTEREST_WEIGHT * np.asarray(interest, dtype=np.float64)
        + AFFINITY_WEIGHT * np.asarray(affinity, dtype=np.float64)
        + FOLLOWS_WEIGHT * np.asarray(follows, dtype=np.float64)
        + QUALITY_WEIGHT * np.asarray(author_quality, dtype=np.float64)
    )


def true_probabilities(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """True probability per head from the latent inputs (arrays broadcast together).

    Args:
        inputs: one array per name in :data:`LATENT_INPUTS`.

    Returns:
        ``{head: float64 array}`` for every head in ``feedrank.config.HEADS``.
    """
    missing = [name for name in LATENT_INPUTS if name not in inputs]
    if missing:
        raise ValueError(f"latent inputs missing: {', '.join(missing)}")
    x = {name: np.asarray(inputs[name], dtype=np.float64) for name in LATENT_INPUTS}
    rel = relevance(x["interest"], x["affinity"], x["follows"], x["author_quality"])
    log_age = np.log1p(np.maximum(x["tweet_age_hours"], 0.0))
    log_pos = np.log1p(np.maximum(x["position"], 0.0))
    active = np.cos(np.pi * x["hours_from_peak"] / 12.0)
    holiday = np.exp(-x["days_to_holiday"] / HOLIDAY_DECAY_DAYS)
    device = x["device_code"].astype(np.int64)
    out: dict[str, np.ndarray] = {}
    for head, c in COEFFICIENTS.items():
        logit = (
            c.bias
            + c.relevance * rel
            + c.media * x["has_media"]
            + c.link * x["has_link"]
            - c.freshness * log_age
            - c.position * log_pos
            + c.active * active
            + c.weekend * x["is_weekend"]
            + c.holiday * holiday
            + np.asarray(c.device)[device]
        )
        out[head] = expit(logit)
    return out


def draw_engagements(
    probabilities: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Draw correlated engagement outcomes whose marginals are exactly the probabilities.

    Args:
        probabilities: ``{head: p}`` as returned by :func:`true_probabilities`.
        rng: the generator to draw from (seeded by the caller for determinism).

    Returns:
        ``{head: bool array}``.
    """
    n = len(next(iter(probabilities.values())))
    mood = rng.standard_normal(n)
    drawn: dict[str, np.ndarray] = {}
    for head in HEADS:
        loading = COEFFICIENTS[head].mood
        z = loading * mood + np.sqrt(1.0 - loading**2) * rng.standard_normal(n)
        drawn[head] = ndtr(z) < probabilities[head]
    return drawn


def draw_delays_s(head: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds from impression to engagement for ``n`` engagements of ``head``."""
    median_s = COEFFICIENTS[head].delay_median_s
    return median_s * np.exp(DELAY_LOG_SIGMA * rng.standard_normal(n)) + 1.0
