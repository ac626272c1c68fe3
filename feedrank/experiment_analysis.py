"""The online experiment's analysis: per-arm outcomes with confidence intervals.

Realized outcomes (:func:`session_outcomes`, :func:`experiment_report`,
:func:`report_from_lake`): one row per served feed, outcome and counter-metric as
:mod:`feedrank.experiment_design` defines them. Arms are assigned per user, so a user's
sessions are not independent draws: every interval of a report resamples users (a bootstrap of
whole users, percentile intervals, :func:`resampled_means`), not sessions. Without user ids,
:func:`compare_to_control` falls back to Welch t-intervals on the difference of means and the
delta method for the relative lift (sessions as units).

Counterfactual outcomes (:func:`counterfactual_report`): every policy scored on the same
requests, compared with a paired bootstrap. ``feedrank experiment report`` is the command
(:mod:`feedrank.experiment_cli`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from feedrank.config import HEADS
from feedrank.errors import FeedrankError
from feedrank.experiment_design import outcome_weights

if TYPE_CHECKING:
    import pandas as pd


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
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, float("nan"), float("nan"))
    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return Interval(mean, mean - half, mean + half)


def resampled_means(
    values: np.ndarray, units: np.ndarray | None, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Mean of each column, then its bootstrap replicates resampling whole units.

    Args:
        values: (rows, columns) outcomes, one row per session or request.
        units: the unit of randomization of each row (user id); ``None``: every row its own.
        resamples: bootstrap replicates.
        rng: the bootstrap's generator.

    Returns:
        ``(1 + resamples, columns)``: row 0 the sample means, then one row per replicate
        (units drawn with replacement; a replicate's mean is over all rows of its units).
    """
    x = np.asarray(values, dtype=np.float64)
    if units is None:
        sums, sizes = x, np.ones(len(x))
    else:
        _, unit = np.unique(np.asarray(units), return_inverse=True)
        sizes = np.bincount(unit).astype(np.float64)
        sums = np.zeros((len(sizes), x.shape[1]))
        np.add.at(sums, unit, x)
    g = len(sizes)
    # Multinomial counts per replicate = drawing g units with replacement, without a
    # (resamples × g × columns) array.
    counts = rng.multinomial(g, np.full(g, 1.0 / g), size=resamples).astype(np.float64)
    return np.vstack([x.mean(axis=0), (counts @ sums) / (counts @ sizes)[:, None]])


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    if np.isnan(replicates).all():  # e.g. a lift over a control arm with no engagement
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - confidence)
    low, high = np.nanpercentile(replicates, [tail, 100.0 - tail])
    return float(low), float(high)


def compare_to_control(
    control: np.ndarray,
    treatment: np.ndarray,
    arm: str = "treatment",
    confidence: float = 0.95,
    control_users: np.ndarray | None = None,
    treatment_users: np.ndarray | None = None,
    resamples: int = 2_000,
    seed: int = 0,
) -> ArmComparison:
    """Difference of means and relative lift of an arm vs control, per session.

    With the sessions' user ids (``control_users``, ``treatment_users``), the intervals
    resample users within each arm (bootstrap, percentile intervals), since arms are
    assigned per user; without them, Welch t-interval on the difference and the delta
    method for the lift, sessions as units.
    """
    from scipy import stats

    c = np.asarray(control, dtype=np.float64)
    t = np.asarray(treatment, dtype=np.float64)
    if c.size < 2 or t.size < 2:
        raise ValueError("an interval needs at least 2 sessions in each arm")
    if control_users is not None and treatment_users is not None:
        rng = np.random.default_rng(seed)
        mc = resampled_means(c[:, None], control_users, resamples, rng)[:, 0]
        mt = resampled_means(t[:, None], treatment_users, resamples, rng)[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = mt / mc - 1.0
        return ArmComparison(
            arm=arm,
            sessions=int(t.size),
            mean=Interval(float(mt[0]), *_percentiles(mt[1:], confidence)),
            diff=Interval(float(mt[0] - mc[0]), *_percentiles(mt[1:] - mc[1:], confidence)),
            lift=Interval(float(lift[0]), *_percentiles(lift[1:], confidence)),
        )
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
    """One row per served feed: its arm (and user), engagement counts per head and weighted
    outcome.

    Args:
        impressions: at least ``request_id``, ``arm``; ``user_id`` is kept when present.
        engagements: at least ``request_id``, ``head``.
        weights: ranking weight per head.
    """
    import pandas as pd

    kept = ["arm", "user_id"] if "user_id" in impressions else ["arm"]
    sessions = impressions.groupby("request_id", sort=True)[kept].first()
    counts = (
        engagements.groupby(["request_id", "head"]).size().unstack("head", fill_value=0)
        if len(engagements)
        else pd.DataFrame(index=pd.Index([], name="request_id"))
    )
    counts = counts.reindex(columns=list(HEADS), fill_value=0)
    sessions = sessions.join(counts, how="left").fillna({h: 0 for h in HEADS})
    for head in HEADS:
        sessions[head] = sessions[head].astype(np.int64)
    sessions["weighted_engagements"] = sum(
        w * sessions[h] for h, w in outcome_weights(weights).items()
    )
    sessions["negative_actions"] = sessions["negative"]
    sessions["impressions"] = impressions.groupby("request_id").size()
    return sessions.reset_index()


def experiment_report(
    sessions: pd.DataFrame, control: str = "control", confidence: float = 0.95
) -> dict:
    """Per-arm metrics with intervals and lift vs control, as a JSON-ready dict.

    With a ``user_id`` column the intervals resample users (the unit of randomization);
    the report's ``interval_unit`` says which.
    """
    if control not in set(sessions["arm"]):
        raise ValueError(f"no sessions in the control arm {control!r}")
    by_user = "user_id" in sessions
    base = sessions[sessions["arm"] == control]
    report: dict = {
        "control": control,
        "confidence": confidence,
        "interval_unit": "user" if by_user else "session",
        "arms": {},
    }
    for arm, group in sessions.groupby("arm", sort=True):
        impressions = max(int(group["impressions"].sum()), 1)
        entry: dict = {
            "sessions": len(group),
            "impressions": impressions,
            "engagement_rate": {h: float(group[h].sum()) / impressions for h in HEADS},
        }
        if by_user:
            entry["users"] = int(group["user_id"].nunique())
        if len(group) < 2 or len(base) < 2:
            report["arms"][str(arm)] = entry
            continue
        for metric in ("weighted_engagements", "negative_actions"):
            comparison = compare_to_control(
                base[metric].to_numpy(),
                group[metric].to_numpy(),
                str(arm),
                confidence,
                base["user_id"].to_numpy() if by_user else None,
                group["user_id"].to_numpy() if by_user else None,
            )
            entry[metric] = {
                "mean": asdict(comparison.mean),
                "diff_vs_control": asdict(comparison.diff),
                "lift_vs_control": asdict(comparison.lift),
            }
        report["arms"][str(arm)] = entry
    return report


def counterfactual_report(
    values: Mapping[str, np.ndarray],
    baseline: str = "chronological",
    ceiling: str = "oracle",
    confidence: float = 0.95,
    resamples: int = 2_000,
    seed: int = 0,
    users: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Paired comparison of policies scored on the same requests, with bootstrap intervals.

    Every policy was evaluated on every request, so requests are resampled together (paired
    bootstrap, percentile intervals): the noise of which requests came cancels in the
    differences instead of adding up as between independent arms. With ``users`` (the
    user of each request) whole users are resampled, all their requests together: a user's
    requests share the user's tastes, so they are not independent draws.

    Args:
        values: policy -> one expected outcome per request (same requests, same order).
        baseline: the policy lifts are measured against.
        ceiling: the policy whose lift is 100% (``share_of_oracle``).
        confidence: interval coverage.
        resamples: bootstrap resamples.
        seed: bootstrap seed (the report is reproducible).
        users: the user of each request; ``None``: requests are the resampled unit.

    Returns:
        ``{policy: {requests, units, mean, lift_pct, ci_low, ci_high, share_of_oracle,
        share_ci_low, share_ci_high}}``; lifts in percent of the baseline's mean, shares as
        fractions of the ceiling's lift; ``units``: users (or requests) resampled.
    """
    names = list(values)
    for required in (baseline, ceiling):
        if required not in values:
            raise ValueError(f"no values for the {required!r} policy")
    matrix = np.column_stack([np.asarray(values[n], dtype=np.float64) for n in names])
    n = matrix.shape[0]
    if n < 2:
        raise ValueError("a paired interval needs at least 2 requests")
    means = resampled_means(matrix, users, resamples, np.random.default_rng(seed))
    units = n if users is None else len(np.unique(np.asarray(users)))
    base = means[:, names.index(baseline)]
    top = means[:, names.index(ceiling)]
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = 100.0 * (means[:, k] / base - 1.0)
            share = (means[:, k] - base) / (top - base)
        lift_lo, lift_hi = _percentiles(lift[1:], confidence)
        share_lo, share_hi = _percentiles(share[1:], confidence)
        out[name] = {
            "requests": n,
            "units": units,
            "mean": float(means[0, k]),
            "lift_pct": float(lift[0]),
            "ci_low": float(lift_lo),
            "ci_high": float(lift_hi),
            "share_of_oracle": float(share[0]),
            "share_ci_low": float(share_lo),
            "share_ci_high": float(share_hi),
        }
    return out


def report_from_lake(
    lake: Path,
    dates: list[str],
    weights: Mapping[str, float],
    control: str = "control",
    request_ids: Collection[str] | None = None,
) -> dict:
    """The experiment report over the landed impressions and engagements of some days.

    ``request_ids`` keeps only those requests' sessions (a demo rerun on the same day must not
    pool the earlier run's sessions with its own).
    """
    from feedrank.lake import read_lake_table

    columns = ["request_id", "arm", "user_id"]
    impressions = read_lake_table(lake, "impressions", dates).select(columns).to_pandas()
    if request_ids is not None:
        impressions = impressions[impressions["request_id"].isin(set(request_ids))]
    if impressions.empty:
        raise FeedrankError(f"no landed impressions under {lake} for {', '.join(dates)}")
    engagements = read_lake_table(lake, "engagements", dates)
    engagements = engagements.select(["request_id", "head"]).to_pandas()
    report = experiment_report(session_outcomes(impressions, engagements, weights), control)
    report["dates"] = dates
    return report
