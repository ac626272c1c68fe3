"""``feedrank evaluate``: a model version against baselines and the simulator's oracle.

Long because: the metrics, references and plots of one evaluation report.

Everything is measured on the same held-out rows: the validation split (the last day, split
by time) of a training-data run, inner-joined with the lake ``oracle`` table on
``(request_id, tweet_id)`` so the oracle's true probabilities are scored on exactly the rows
the model is.

Downsampling. The validation split may have its all-negative impressions downsampled
(``keep_prob`` < 1). Head metrics must describe the real traffic, so each row counts
``1/keep_prob`` times: rows are repeated that many times before calling
:func:`feedrank.offline_metrics.head_metrics` (exact when ``1/keep_prob`` is a whole number, as with
the default keep-rate 0.25; otherwise rounded, and the rounding is reported). NDCG is
computed on the rows as they are — every ranker sees the same thinned lists, so the
comparison stays fair.

Rankers compared by per-request NDCG@10 of the weighted-engagement order (gain
``max(0, Σ w_h·y_h)``, :func:`feedrank.ranking.engagement_relevance`):

* ``chronological`` — the old feed: logged ``position`` ascending.
* ``popularity`` — the tweet's positive engagements so far (daily totals + last hour).
* ``light`` — the light ranker (a linear estimate of the model's weighted score).
* ``model`` — the weighted score of the recalibrated XGBoost heads.
* ``model_diversity`` — the same after the author-diversity discount (what serving shows).
* ``oracle`` — the weighted score of the simulator's true probabilities.
* ``no_pair`` / ``ceiling`` — the knowable references of
  :mod:`feedrank.simulator.references`: the truth without the pair affinity, and the truth
  with the affinity's posterior given the pair's logs before each impression. Their head
  metrics sit beside the oracle's (``ceiling_rce``, ``no_pair_rce``, …).

Calibration by decile. Per head, predicted vs observed rate in each decile of the
prediction (deciles of the re-weighted impressions,
:func:`feedrank.offline_metrics.calibration_deciles`), for the model and the oracle; the worst
relative error over deciles with at least ``DECILE_MIN_IMPRESSIONS`` impressions is
``calibration_decile_max_error`` (the oracle's, ``oracle_calibration_decile_max_error``, is
the held-out day's own sampling noise at that size), and the worst decile in binomial
standard deviations ``calibration_decile_max_abs_z`` (above 2: beyond the sampling noise).

Outputs under ``<paths.reports>/<version>/``: ``metrics.json``, ``report.md`` and PNG plots.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feedrank import feature_spec, model_files, tracking
from feedrank.config import HEADS, POSITIVE_HEADS, Settings
from feedrank.errors import FeedrankError
from feedrank.model import LoadedModel
from feedrank.offline_metrics import calibration_deciles, head_metrics, max_decile_error
from feedrank.ranking import author_diversity, engagement_relevance, grouped_ndcg, weighted_score
from feedrank.simulator.references import REFERENCES, lake_references
from jobs.train_inputs import TrainingData, feature_matrix, load_training_data, resolve_run

log = logging.getLogger("feedrank.evaluate")

NDCG_K = 10
RANKERS: tuple[str, ...] = (
    "chronological",
    "popularity",
    "light",
    "model",
    "model_diversity",
    "oracle",
    "ceiling",
    "no_pair",
)
# Goals of issue #6, reported (not enforced) in metrics.json.
GOAL_RCE_SHARE = 0.90
GOAL_NDCG_SHARE = 0.95
# Issue #25's calibration goal: in every decile of the prediction with at least this many
# impressions, the observed rate within GOAL_DECILE_ERROR of the predicted one.
DECILE_MIN_IMPRESSIONS = 1_000
GOAL_DECILE_ERROR = 0.05


@dataclass
class EvalRows:
    """The held-out rows every model and baseline is scored on."""

    frame: pd.DataFrame  # validation rows (+ oracle p_<head> columns when available)
    X: np.ndarray  # model_features() matrix
    repeats: np.ndarray  # times each row counts (1/keep_prob, rounded)
    has_oracle: bool
    oracle_coverage: float
    data: TrainingData
    has_references: bool = False

    @property
    def labels(self) -> dict[str, np.ndarray]:
        return {h: self.frame[f"label_{h}"].to_numpy(np.float64) for h in HEADS}

    def oracle_probs(self) -> dict[str, np.ndarray]:
        return {h: self.frame[f"p_{h}"].to_numpy(np.float64) for h in HEADS}

    def reference_probs(self, name: str) -> dict[str, np.ndarray]:
        return {h: self.frame[f"{name}_{h}"].to_numpy(np.float64) for h in HEADS}


def load_oracle(lake_root: Path, dates: list[str]) -> pd.DataFrame | None:
    """The lake ``oracle`` rows of the given days (``None`` if there are none)."""
    folders = [lake_root / "oracle" / f"date={d}" for d in dates]
    folders = [f for f in folders if f.is_dir() and any(f.glob("*.parquet"))]
    if not folders:
        return None
    columns = ["request_id", "tweet_id", *(f"p_{h}" for h in HEADS)]
    oracle = pd.concat([pd.read_parquet(f, columns=columns) for f in folders], ignore_index=True)
    return oracle.drop_duplicates(["request_id", "tweet_id"])


def prepare_rows(settings: Settings, data: TrainingData, lake_root: Path | None = None) -> EvalRows:
    """Validation rows joined with the oracle; rows without an oracle value are dropped.

    If the lake has no oracle for the validation days, every validation row is kept and the
    oracle columns of the metrics are ``null``.
    """
    frame = data.validation.reset_index(drop=True)
    dates = data.manifest.get("validation_dates") or sorted(
        {str(d) for d in pd.to_datetime(frame["served_at"], utc=True).dt.date}
    )
    oracle = load_oracle(lake_root or settings.paths.lake, list(dates))
    coverage = 0.0
    has_references = False
    if oracle is not None:
        joined = frame.merge(oracle, on=["request_id", "tweet_id"], how="inner")
        if len(joined):
            # The references need every logged row of the pair before each impression, so
            # they come from the lake, not from the (downsampled) validation split.
            try:
                refs = lake_references(
                    settings, lake_root or settings.paths.lake, joined, max(dates)
                )
            except (FileNotFoundError, ValueError) as exc:
                # A lake that is not the simulator's (no engagements or tweets, foreign ids);
                # a lake of another simulated world is refused (WorldMismatch propagates).
                log.warning("knowable references omitted: %s", exc)
            else:
                joined = joined.merge(refs, on=["request_id", "tweet_id"], how="inner")
                has_references = len(joined) > 0
        coverage = len(joined) / max(len(frame), 1)
        if len(joined) == 0:
            log.warning("oracle has no row for the validation split; oracle metrics omitted")
        else:
            frame = joined
        if coverage < 1.0:
            log.warning(
                "oracle covers %.1f%% of validation rows; scoring the covered rows", 100 * coverage
            )
    weights = 1.0 / frame[feature_spec.KEEP_PROB_COLUMN].to_numpy(np.float64)
    repeats = np.maximum(np.rint(weights), 1).astype(np.int64)
    return EvalRows(
        frame=frame,
        X=feature_matrix(frame),
        repeats=repeats,
        has_oracle=oracle is not None and coverage > 0,
        oracle_coverage=coverage,
        data=data,
        has_references=has_references,
    )


def _weighted_head_metrics(y: np.ndarray, p: np.ndarray, repeats: np.ndarray) -> dict[str, float]:
    return head_metrics(np.repeat(y, repeats), np.repeat(p, repeats))


def popularity_scores(frame: pd.DataFrame) -> np.ndarray:
    """Popularity baseline: the tweet's positive engagements so far (NaN counts as 0)."""
    cols = [f"tweet_{h}_total" for h in POSITIVE_HEADS] + ["tweet_engagements_1h"]
    return np.nan_to_num(frame[cols].to_numpy(np.float64), nan=0.0).sum(axis=1)


def diversity_scores(
    scores: np.ndarray, request_ids: np.ndarray, author_ids: np.ndarray, floor: float
) -> np.ndarray:
    """:func:`feedrank.ranking.author_diversity` applied within each request."""
    out = np.empty_like(scores, dtype=np.float64)
    order = np.argsort(request_ids, kind="stable")
    sorted_ids = request_ids[order]
    bounds = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1], True])
    for start, end in itertools.pairwise(bounds):
        idx = order[start:end]
        out[idx] = author_diversity(scores[idx], author_ids[idx], floor)
    return out


def score_model(
    model: LoadedModel, rows: EvalRows, settings: Settings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of one model (and the baselines and oracle) on prepared rows.

    Returns:
        ``(metrics, predictions)``: the ``metrics.json`` content and the arrays the plots need.
    """
    labels = rows.labels
    preds = model.predict_heads(rows.X)
    oracle = rows.oracle_probs() if rows.has_oracle else None
    heads: dict[str, dict[str, Any]] = {}
    deciles: dict[str, dict[str, Any]] = {}
    for head in HEADS:
        m = _weighted_head_metrics(labels[head], preds[head], rows.repeats)
        deciles[head] = {
            "model": calibration_deciles(labels[head], preds[head], rows.repeats),
            "oracle": calibration_deciles(labels[head], oracle[head], rows.repeats)
            if oracle is not None
            else None,
        }
        entry: dict[str, Any] = {
            "auc": m["roc_auc"],
            "pr_auc": m["pr_auc"],
            "logloss": m["log_loss"],
            "rce": m["rce"],
            "calibration": m["calibration"],
            "positive_rate": m["positive_rate"],
            # held-out positives (the negatives' repeats do not add any): the gate's noise scale
            "positives": m["rows"] * m["positive_rate"],
            "calibration_decile_max_error": max_decile_error(
                deciles[head]["model"], DECILE_MIN_IMPRESSIONS
            ),
            "oracle_calibration_decile_max_error": max_decile_error(
                deciles[head]["oracle"], DECILE_MIN_IMPRESSIONS
            )
            if oracle is not None
            else None,
            # The same deciles in sampling standard deviations: what noise cannot explain.
            "calibration_decile_max_abs_z": max_decile_error(
                deciles[head]["model"], DECILE_MIN_IMPRESSIONS, key="z"
            ),
            "oracle_auc": None,
            "oracle_pr_auc": None,
            "oracle_logloss": None,
            "oracle_rce": None,
            "oracle_calibration": None,
            "rce_share_of_oracle": None,
            **{f"{name}_{k}": None for name in REFERENCES for k in ("auc", "logloss", "rce")},
            **{f"rce_share_of_{name}": None for name in REFERENCES},
        }
        for name in REFERENCES if rows.has_references else ():
            r = _weighted_head_metrics(labels[head], rows.reference_probs(name)[head], rows.repeats)
            entry.update(
                {
                    f"{name}_auc": r["roc_auc"],
                    f"{name}_logloss": r["log_loss"],
                    f"{name}_rce": r["rce"],
                    f"rce_share_of_{name}": m["rce"] / r["rce"]
                    if r["rce"] and r["rce"] > 0
                    else None,
                }
            )
        if oracle is not None:
            o = _weighted_head_metrics(labels[head], oracle[head], rows.repeats)
            entry.update(
                oracle_auc=o["roc_auc"],
                oracle_pr_auc=o["pr_auc"],
                oracle_logloss=o["log_loss"],
                oracle_rce=o["rce"],
                oracle_calibration=o["calibration"],
                rce_share_of_oracle=m["rce"] / o["rce"] if o["rce"] and o["rce"] > 0 else None,
            )
        heads[head] = entry

    weights = model.weights
    request_ids = rows.frame["request_id"].to_numpy()
    relevance = engagement_relevance(labels, weights)
    model_score = weighted_score(preds, weights)
    scores = {
        "chronological": -rows.frame["position"].to_numpy(np.float64),
        "popularity": popularity_scores(rows.frame),
        "light": model.light_scores(rows.X),
        "model": model_score,
        "model_diversity": diversity_scores(
            model_score,
            request_ids,
            rows.frame["author_id"].to_numpy(),
            settings.ranking.author_diversity_floor,
        ),
    }
    if oracle is not None:
        scores["oracle"] = weighted_score(oracle, weights)
    for name in REFERENCES if rows.has_references else ():
        scores[name] = weighted_score(rows.reference_probs(name), weights)
    ndcg = {name: None for name in RANKERS}
    ndcg.update(
        {name: grouped_ndcg(request_ids, relevance, s, NDCG_K) for name, s in scores.items()}
    )
    summary = {
        "mean_rce": float(np.mean([heads[h]["rce"] for h in HEADS])),
        "min_auc": float(np.min([heads[h]["auc"] for h in HEADS])),
        "ndcg10_share_of_oracle": ndcg["model"] / ndcg["oracle"] if ndcg["oracle"] else None,
        **{
            f"ndcg10_share_of_{name}": ndcg["model"] / ndcg[name] if ndcg[name] else None
            for name in REFERENCES
        },
    }
    goals = None
    if oracle is not None:
        goals = {
            "rce_ge_90pct_oracle": {
                h: bool((heads[h]["rce_share_of_oracle"] or 0) >= GOAL_RCE_SHARE) for h in HEADS
            },
            "ndcg10_ge_95pct_oracle": bool(
                (summary["ndcg10_share_of_oracle"] or 0) >= GOAL_NDCG_SHARE
            ),
            "model_above_chronological_and_popularity": bool(
                ndcg["model"] > max(ndcg["chronological"], ndcg["popularity"])
            ),
            "calibration_deciles_within_5pct": {
                h: heads[h]["calibration_decile_max_error"] is not None
                and heads[h]["calibration_decile_max_error"] <= GOAL_DECILE_ERROR
                for h in HEADS
            },
        }
    metrics = {
        "version": model.version,
        "data_run": str(rows.data.run_dir),
        "manifest_sha256": rows.data.manifest_sha256,
        "validation_dates": rows.data.manifest.get("validation_dates"),
        "rows": len(rows.frame),
        "rows_reweighted": int(rows.repeats.sum()),
        "reweighting": "each row counted round(1/keep_prob) times for head metrics; "
        "NDCG on the rows as stored",
        "reweighting_max_rounding": float(
            np.max(np.abs(rows.repeats - 1.0 / rows.frame[feature_spec.KEEP_PROB_COLUMN]))
        ),
        "requests": int(rows.frame["request_id"].nunique()),
        "oracle_coverage": rows.oracle_coverage,
        "ndcg_k": NDCG_K,
        "ranking_weights": weights,
        "heads": heads,
        "ndcg10": ndcg,
        "summary": summary,
        "goals": goals,
        "calibration_decile_min_impressions": DECILE_MIN_IMPRESSIONS,
        "calibration_deciles": deciles,
    }
    predictions = {"preds": preds, "oracle": oracle, "labels": labels, "scores": scores}
    return _finite(metrics), predictions


def _finite(value: Any) -> Any:
    """NaN/inf → ``None`` recursively, so ``metrics.json`` is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- report


def _plot_roc(path: Path, predictions: dict[str, Any], repeats: np.ndarray) -> None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, len(HEADS), figsize=(4 * len(HEADS), 4), squeeze=False)
    for ax, head in zip(axes[0], HEADS, strict=True):
        y = predictions["labels"][head]
        series = [("model", predictions["preds"][head])]
        if predictions["oracle"] is not None:
            series.append(("oracle", predictions["oracle"][head]))
        for name, p in series:
            if 0 < y.sum() < len(y):
                fpr, tpr, _ = roc_curve(y, p, sample_weight=repeats)
                ax.plot(fpr, tpr, label=name)
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set_title(f"ROC — {head}")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_calibration(path: Path, metrics: dict[str, Any]) -> None:
    """Reliability plot per head: observed vs predicted rate in each decile, model and oracle.

    Log axes (the deciles span two orders of magnitude); the grey band is the goal's ±5 %;
    hollow markers are deciles under ``DECILE_MIN_IMPRESSIONS`` impressions.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(HEADS), figsize=(4 * len(HEADS), 4), squeeze=False)
    minimum = metrics["calibration_decile_min_impressions"]
    for ax, head in zip(axes[0], HEADS, strict=True):
        low, high = math.inf, 0.0
        for name, marker in (("model", "o"), ("oracle", "s")):
            deciles = metrics["calibration_deciles"][head][name]
            if not deciles:
                continue
            q = np.array([d["predicted"] for d in deciles])
            # A decile without a positive is drawn at a tenth of the lowest prediction.
            o = np.maximum([d["observed"] for d in deciles], q.min() / 10)
            big = np.array([d["impressions"] >= minimum for d in deciles])
            line = ax.plot(q, o, "-", linewidth=1, label=name)[0]
            ax.plot(q[big], o[big], marker, color=line.get_color())
            ax.plot(q[~big], o[~big], marker, color=line.get_color(), fillstyle="none")
            low, high = min(low, q.min()), max(high, q.max(), o.max())
        if high > 0:
            diagonal = np.geomspace(low, high, 50)
            ax.fill_between(diagonal, 0.95 * diagonal, 1.05 * diagonal, color="0.85")
            ax.plot(diagonal, diagonal, "k:", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_minor_formatter(NullFormatter())
        error = metrics["heads"][head]["calibration_decile_max_error"]
        ax.set_title(f"{head}: worst decile {_fmt_pct(error)}")
        ax.set_xlabel("mean predicted rate (decile)")
        ax.set_ylabel("observed rate")
        ax.legend(loc="upper left")
    fig.suptitle("calibration by decile of the prediction (grey: ±5 %)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _plot_rce(path: Path, metrics: dict[str, Any]) -> None:
    import matplotlib.pyplot as plt

    x = np.arange(len(HEADS))
    series = [("model", "rce"), ("no_pair", "no_pair_rce"), ("ceiling", "ceiling_rce")]
    series.append(("oracle", "oracle_rce"))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(series)
    for k, (label, key) in enumerate(series):
        values = [metrics["heads"][h][key] or 0.0 for h in HEADS]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, HEADS)
    ax.set_ylabel("RCE (%)")
    ax.set_title("RCE per head: model vs the references (same rows)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def feature_importance(model: LoadedModel, top: int = 20) -> list[tuple[str, float]]:
    """Total gain per feature, each head's gains normalised to sum 1, summed over heads."""
    total: dict[str, float] = {}
    for booster in model.boosters.values():
        gains = booster.get_score(importance_type="total_gain")
        norm = sum(gains.values()) or 1.0
        for name, g in gains.items():
            # Boosters without stored names report f<index>.
            if name.startswith("f") and name[1:].isdigit():
                name = model.features[int(name[1:])]
            total[name] = total.get(name, 0.0) + g / norm
    return sorted(total.items(), key=lambda kv: -kv[1])[:top]


def _plot_importance(path: Path, importance: list[tuple[str, float]]) -> None:
    import matplotlib.pyplot as plt

    names = [n for n, _ in importance][::-1]
    values = [v for _, v in importance][::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(names))))
    ax.barh(names, values)
    ax.set_xlabel("share of total gain, summed over heads")
    ax.set_title("feature importance (top 20)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _fmt(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _decile_lines(metrics: dict[str, Any]) -> list[str]:
    """The calibration-by-decile section of the report."""
    minimum = metrics["calibration_decile_min_impressions"]
    lines = [
        "",
        "## Calibration by decile of the prediction",
        "",
        f"Worst |observed − predicted| / predicted over deciles with ≥ {minimum:,} "
        "impressions (re-weighted); the oracle's is the held-out day's own noise; in sd: the "
        "worst decile in binomial standard deviations (> 2: beyond noise). Per decile "
        "(lowest predictions first): predicted / observed rate, impressions, positives.",
        "",
        "| head | worst decile, model | worst decile, oracle | worst decile in sd, model | deciles "
        "(predicted / observed, impressions, positives) |",
        "|---|---|---|---|---|",
    ]
    for head in HEADS:
        m = metrics["heads"][head]
        cells = "; ".join(
            f"{d['predicted']:.4f} / {d['observed']:.4f}, {d['impressions']:,}, "
            f"{d['positives']:.0f}"
            for d in metrics["calibration_deciles"][head]["model"]
        )
        lines.append(
            f"| {head} | {_fmt_pct(m['calibration_decile_max_error'])} | "
            f"{_fmt_pct(m['oracle_calibration_decile_max_error'])} | "
            f"{_fmt(m['calibration_decile_max_abs_z'], 1)} | {cells} |"
        )
    return lines


def render_markdown(metrics: dict[str, Any], importance: list[tuple[str, float]]) -> str:
    """The human-readable report of ``metrics.json``."""
    lines = [
        f"# Evaluation of model {metrics['version']}",
        "",
        f"- data: `{metrics['data_run']}` (validation days {metrics['validation_dates']})",
        f"- rows: {metrics['rows']} stored, {metrics['rows_reweighted']} after re-weighting "
        f"by 1/keep_prob; {metrics['requests']} feed requests; oracle coverage "
        f"{100 * metrics['oracle_coverage']:.1f}%",
        "",
        "## Heads (model vs oracle, same rows)",
        "",
        "| head | AUC | oracle AUC | PR-AUC | oracle PR-AUC | log loss | RCE | oracle RCE |"
        " RCE/oracle | calibration |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for head in HEADS:
        m = metrics["heads"][head]
        lines.append(
            f"| {head} | {_fmt(m['auc'])} | {_fmt(m['oracle_auc'])} | {_fmt(m['pr_auc'])} | "
            f"{_fmt(m['oracle_pr_auc'])} | {_fmt(m['logloss'])} | {_fmt(m['rce'], 2)} | "
            f"{_fmt(m['oracle_rce'], 2)} | {_fmt(m['rce_share_of_oracle'], 3)} | "
            f"{_fmt(m['calibration'], 3)} |"
        )
    lines += [
        "",
        "## Knowable references (same rows; model's RCE as a share of each)",
        "",
        "`no_pair`: the truth with each user×author affinity at its prior mean; `ceiling`: "
        "the truth with the affinity's posterior given the pair's logs before the impression "
        "(what a perfect model of these logs could know); `oracle`: the truth itself.",
        "",
        "| head | RCE | no_pair RCE | ceiling RCE | oracle RCE | of no_pair | of ceiling |"
        " of oracle | log loss no_pair / ceiling / oracle | AUC no_pair / ceiling / oracle |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for head in HEADS:
        m = metrics["heads"][head]
        lines.append(
            f"| {head} | {_fmt(m['rce'], 2)} | {_fmt(m['no_pair_rce'], 2)} | "
            f"{_fmt(m['ceiling_rce'], 2)} | {_fmt(m['oracle_rce'], 2)} | "
            f"{_fmt(m['rce_share_of_no_pair'], 3)} | {_fmt(m['rce_share_of_ceiling'], 3)} | "
            f"{_fmt(m['rce_share_of_oracle'], 3)} | {_fmt(m['no_pair_logloss'])} / "
            f"{_fmt(m['ceiling_logloss'])} / {_fmt(m['oracle_logloss'])} | "
            f"{_fmt(m['no_pair_auc'])} / {_fmt(m['ceiling_auc'])} / {_fmt(m['oracle_auc'])} |"
        )
    lines += [
        "",
        f"## NDCG@{metrics['ndcg_k']} of the weighted-engagement order (per request, mean)",
        "",
        "| ranker | NDCG@10 |",
        "|---|---|",
    ]
    for name in RANKERS:
        lines.append(f"| {name} | {_fmt(metrics['ndcg10'][name])} |")
    lines += _decile_lines(metrics)
    lines += ["", "## Goals", "", "```json", json.dumps(metrics["goals"], indent=2), "```", ""]
    lines += [
        "## Plots",
        "",
        "![ROC per head](roc.png)",
        "",
        "![Calibration by decile per head](calibration.png)",
        "",
        "![RCE vs oracle](rce_vs_oracle.png)",
        "",
        "![Feature importance](feature_importance.png)",
        "",
        "## Top features (share of gain, summed over heads)",
        "",
        *(f"- {name}: {value:.3f}" for name, value in importance),
        "",
        f"Downsampling: {metrics['reweighting']}.",
    ]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    metrics: dict[str, Any],
    predictions: dict[str, Any],
    rows: EvalRows,
    model: LoadedModel,
) -> Path:
    """Write ``metrics.json``, the plots and ``report.md`` into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    _plot_roc(out_dir / "roc.png", predictions, rows.repeats)
    _plot_calibration(out_dir / "calibration.png", metrics)
    _plot_rce(out_dir / "rce_vs_oracle.png", metrics)
    importance = feature_importance(model)
    _plot_importance(out_dir / "feature_importance.png", importance)
    report = out_dir / "report.md"
    report.write_text(render_markdown(metrics, importance))
    return report


def evaluate(
    settings: Settings,
    model: str | Path,
    data: str | Path | None = None,
    lake_root: Path | None = None,
    out_dir: Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """Evaluate a model version and write its report.

    Args:
        settings: Resolved settings.
        model: Version name, ``"champion"`` or a model directory.
        data: Training-data run; default: the run the model was trained on.
        lake_root: Lake with the ``oracle`` table; default ``paths.lake``.
        out_dir: Report directory; default ``<paths.reports>/<version>``.

    Returns:
        ``(metrics, report_path)``.
    """
    loaded = model_files.load_model(tracking.local_model_dir(settings, model), settings)
    if data is None:
        data = (loaded.metadata.get("training_data") or {}).get("run")
        if data is None or not Path(data).is_dir():
            raise FeedrankError(
                f"model {loaded.version}: its training-data run is gone; pass --data"
            )
    training_data = load_training_data(resolve_run(settings, data))
    rows = prepare_rows(settings, training_data, lake_root)
    metrics, predictions = score_model(loaded, rows, settings)
    out = out_dir or settings.paths.reports / loaded.version
    run_id = (loaded.metadata.get("training") or {}).get("mlflow_run_id")
    metrics["mlflow_run_id"] = run_id
    report = write_report(out, metrics, predictions, rows, loaded)
    if run_id:
        log_evaluation(settings, run_id, metrics, report.parent)
    log.info("evaluated %s: report %s, MLflow run %s", loaded.version, report, run_id)
    return metrics, report


def log_evaluation(settings: Settings, run_id: str, metrics: dict[str, Any], out: Path) -> None:
    """Add the evaluation to the model's training run.

    Metrics ``heads.<head>.<metric>`` (the model's, among them
    ``calibration_decile_max_error``, and beside them ``oracle_*``, ``ceiling_*``,
    ``no_pair_*`` and the shares of each), ``ndcg10.<ranker>``,
    ``summary.*``; the report folder (plots, ``report.md``, ``metrics.json``) as artifact
    ``evaluation/<data run>``.
    """
    tracking.log_to_run(
        settings,
        run_id,
        metrics={k: metrics[k] for k in ("heads", "ndcg10", "summary")},
        tags={"evaluated_on": Path(metrics["data_run"]).name},
        artifacts={f"evaluation/{Path(metrics['data_run']).name}": out},
    )
