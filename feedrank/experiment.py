"""Online experiment: stable arm assignment and per-arm metrics with confidence intervals.

A session is one served feed (one feed request). Its outcome is the weighted sum of the
engagements the (simulated) user made with what was shown, weights from
``settings.ranking.weights``; negative actions per session are the counter-metric.
Intervals are Welch t-intervals on the difference of means; the relative lift's interval
uses the delta method.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

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


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class ArmComparison:
    """One arm against control on one metric."""

    arm: str
    sessions: int
    mean: Interval
    diff: Interval
    lift: Interval


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean with a t-interval."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, float("nan"), float("nan"))
    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return Interval(mean, mean - half, mean + half)


def compare_to_control(
    control: np.ndarray, treatment: np.ndarray, arm: str = "treatment", confidence: float = 0.95
) -> ArmComparison:
    """Difference of means (Welch) and relative lift (delta method) of an arm vs control."""
    c = np.asarray(control, dtype=np.float64)
    t = np.asarray(treatment, dtype=np.float64)
    if c.size < 2 or t.size < 2:
        raise ValueError("an interval needs at least 2 sessions in each arm")
    mc, mt = c.mean(), t.mean()
    vc, vt = c.var(ddof=1) / c.size, t.var(ddof=1) / t.size
    se = np.sqrt(vc + vt)
    dof = (vc + vt) ** 2 / (vc**2 / (c.size - 1) + vt**2 / (t.size - 1)) if se > 0 else 1.0
    q = stats.t.ppf(0.5 + confidence / 2, dof)
    diff = mt - mc
    lift = mt / mc - 1.0 if mc != 0 else float("nan")
    lift_se = np.sqrt(vt / mc**2 + (mt**2 / mc**4) * vc) if mc != 0 else float("nan")
    zq = stats.norm.ppf(0.5 + confidence / 2)
    return ArmComparison(
        arm=arm,
        sessions=int(t.size),
        mean=mean_interval(t, confidence),
        diff=Interval(float(diff), float(diff - q * se), float(diff + q * se)),
        lift=Interval(float(lift), float(lift - zq * lift_se), float(lift + zq * lift_se)),
    )


def session_outcomes(
    impressions: pd.DataFrame, engagements: pd.DataFrame, weights: Mapping[str, float]
) -> pd.DataFrame:
    """One row per served feed: its arm, engagement counts per head and weighted outcome.

    Args:
        impressions: at least ``request_id``, ``arm``.
        engagements: at least ``request_id``, ``head``.
        weights: ranking weight per head.
    """
    sessions = impressions.groupby("request_id", sort=True)["arm"].first().to_frame()
    counts = (
        engagements.groupby(["request_id", "head"]).size().unstack("head", fill_value=0)
        if len(engagements)
        else pd.DataFrame(index=pd.Index([], name="request_id"))
    )
    counts = counts.reindex(columns=list(HEADS), fill_value=0)
    sessions = sessions.join(counts, how="left").fillna({h: 0 for h in HEADS})
    for head in HEADS:
        sessions[head] = sessions[head].astype(np.int64)
    positive = [h for h in HEADS if weights[h] > 0]
    sessions["weighted_engagements"] = sum(weights[h] * sessions[h] for h in positive)
    sessions["negative_actions"] = sessions["negative"]
    sessions["impressions"] = impressions.groupby("request_id").size()
    return sessions.reset_index()


def experiment_report(
    sessions: pd.DataFrame, control: str = "control", confidence: float = 0.95
) -> dict:
    """Per-arm metrics with intervals and lift vs control, as a JSON-ready dict."""
    if control not in set(sessions["arm"]):
        raise ValueError(f"no sessions in the control arm {control!r}")
    base = sessions[sessions["arm"] == control]
    report: dict = {"control": control, "confidence": confidence, "arms": {}}
    for arm, group in sessions.groupby("arm", sort=True):
        impressions = max(int(group["impressions"].sum()), 1)
        entry: dict = {
            "sessions": len(group),
            "impressions": impressions,
            "engagement_rate": {h: float(group[h].sum()) / impressions for h in HEADS},
        }
        if len(group) < 2 or len(base) < 2:
            report["arms"][str(arm)] = entry
            continue
        for metric in ("weighted_engagements", "negative_actions"):
            comparison = compare_to_control(
                base[metric].to_numpy(), group[metric].to_numpy(), str(arm), confidence
            )
            entry[metric] = {
                "mean": asdict(comparison.mean),
                "diff_vs_control": asdict(comparison.diff),
                "lift_vs_control": asdict(comparison.lift),
            }
        report["arms"][str(arm)] = entry
    return report
