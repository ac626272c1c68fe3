"""The online experiment's design: who gets which arm, and what a session's outcome counts.

Arms are assigned per user by a stable hash (:func:`assign_arm`): the scorer, the streaming
feature job and the analysis all call it, so a user's arm is the same everywhere and across
restarts. A session is one served feed; its outcome is the weighted sum of the engagements
made with it, over the heads :func:`outcome_weights` keeps (positive ranking weights);
negative actions are the counter-metric.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from feedrank.config import HEADS

_SCALE = float(2**64)


def _unit_interval(user_id: int, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign_arm(user_id: int, arms: Mapping[str, float], salt: str) -> str:
    """The arm of a user: a pure function of (salt, user id), so stable across restarts.

    Args:
        user_id: the user.
        arms: arm name -> traffic share; shares sum to 1 (order of the mapping is kept).
        salt: experiment salt; a new salt gives an independent reshuffle.
    """
    u = _unit_interval(user_id, salt)
    edge = 0.0
    names = list(arms)
    for name in names:
        edge += arms[name]
        if u < edge:
            return name
    return names[-1]


def outcome_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The heads a session's weighted engagements count: those with a positive weight.

    Negative feedback is the counter-metric, counted on its own, not subtracted.
    """
    return {h: float(weights[h]) for h in HEADS if weights[h] > 0}
