"""``<reports>/report.html``: the demo's figures in one self-contained page.

The plots a reader would rather look at than read: calibration per head (the evaluation's
reliability plot), NDCG@10 by ranker against the oracle and the knowable ceiling, the online
lift of each ranker with its interval, and the end-to-end latency of the served feeds against
the budget. Images are embedded, so the file can be mailed or attached to a ticket as is.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

# Offline rankers in the order a reader compares them: old feed → baselines → ours → references.
RANKER_ORDER = (
    "chronological",
    "popularity",
    "light",
    "model",
    "model_diversity",
    "no_pair",
    "ceiling",
    "oracle",
)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def ndcg_figure(ndcg10: dict[str, float]) -> str:
    """Bars of NDCG@10 per ranker, the oracle and the ceiling as reference lines."""
    import matplotlib.pyplot as plt

    names = [n for n in RANKER_ORDER if n in ndcg10] + sorted(set(ndcg10) - set(RANKER_ORDER))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(names, [ndcg10[n] for n in names], color="#4c72b0")
    for ref, style in (("oracle", "k--"), ("ceiling", "g:")):
        if ref in ndcg10:
            ax.axhline(ndcg10[ref], color=style[0], linestyle=style[1:], label=ref, linewidth=1)
    low = min(ndcg10.values())
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set_ylabel("NDCG@10 (held-out day)")
    ax.tick_params(axis="x", rotation=20)
    ax.legend(loc="upper left")
    return _png(fig)


def lift_figure(counterfactual: dict[str, dict], experiment: dict) -> str:
    """Left: each ranker's paired counterfactual lift as a share of the oracle's, with its
    interval. Right: realized lift of weighted engagements per served arm vs control."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    names = [n for n in counterfactual if n != "chronological"]
    share = np.array([counterfactual[n]["share_of_oracle"] for n in names]) * 100
    low = np.array([counterfactual[n]["share_ci_low"] for n in names]) * 100
    high = np.array([counterfactual[n]["share_ci_high"] for n in names]) * 100
    left.bar(names, share, yerr=[share - low, high - share], capsize=4, color="#55a868")
    left.set_ylabel("% of the oracle's lift over chronological")
    left.set_title("paired counterfactual (same requests)")
    arms = {a: v for a, v in experiment.get("arms", {}).items() if a != experiment.get("control")}
    lift = [arms[a]["weighted_engagements"]["lift_vs_control"] for a in arms]
    est = np.array([x["estimate"] for x in lift]) * 100
    right.bar(
        list(arms),
        est,
        yerr=[
            est - np.array([x["low"] for x in lift]) * 100,
            np.array([x["high"] for x in lift]) * 100 - est,
        ],
        capsize=4,
        color="#c44e52",
    )
    right.axhline(0, color="k", linewidth=0.8)
    right.set_ylabel("% lift in weighted engagements per session")
    right.set_title(f"realized, vs {experiment.get('control', 'control')} (user-level intervals)")
    return _png(fig)


def latency_figure(latency_ms: dict[str, list[float]], budget_ms: float) -> str:
    """Histogram of request → ranked-feed latency per arm, with the budget line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    every = np.concatenate([np.asarray(v, dtype=float) for v in latency_ms.values()] or [[0.0]])
    top = max(float(every.max(initial=0.0)), budget_ms) * 1.05
    bins = np.linspace(0, top, 60)
    for arm, values in sorted(latency_ms.items()):
        ax.hist(values, bins=bins, alpha=0.5, label=f"{arm} ({len(values)})")
    ax.axvline(budget_ms, color="r", linestyle="--", label=f"budget {budget_ms:.0f} ms")
    ax.set_xlabel("ms from request produced to ranked feed consumed")
    ax.set_ylabel("feeds")
    ax.set_yscale("log")
    ax.legend()
    return _png(fig)


def write_report_html(
    path: Path,
    summary: dict,
    metrics: dict,
    latency_ms: dict[str, list[float]],
    budget_ms: float,
    calibration_png: Path | None,
) -> Path:
    """Write the demo's page; returns ``path``.

    Args:
        path: Where to write (``<reports>/report.html``).
        summary: The demo summary (``demo.json``'s content).
        metrics: The champion's ``metrics.json`` (``ndcg10``, ``heads``).
        latency_ms: Per arm, each served feed's end-to-end latency in ms.
        budget_ms: The serving budget, drawn on the latency plot.
        calibration_png: The evaluation's reliability plot per head, if it exists.
    """
    sections: list[tuple[str, str, str]] = []
    if calibration_png is not None and calibration_png.is_file():
        image = base64.b64encode(calibration_png.read_bytes()).decode()
        sections.append(
            (
                "Calibration per head",
                "Mean predicted probability against the observed rate, by prediction decile "
                "(deciles of the held-out day's impressions; log axes, the grey band ±5 %); "
                "the oracle's curve shows how close the labels come to the simulator's truth.",
                image,
            )
        )
    if metrics.get("ndcg10"):
        sections.append(
            (
                "NDCG@10 by ranker",
                "Offline, on the held-out day: the old chronological feed, the baselines, the "
                "light ranker, the champion, and the references (the knowable ceiling, the "
                "oracle).",
                ndcg_figure(metrics["ndcg10"]),
            )
        )
    if summary.get("counterfactual") or summary.get("experiment", {}).get("arms"):
        sections.append(
            (
                "Online lift",
                "Left: every ranker re-ranks the same served requests and the simulator's truth "
                "scores them (paired). Right: what the served arms realized, with intervals that "
                "resample users.",
                lift_figure(summary.get("counterfactual") or {}, summary.get("experiment") or {}),
            )
        )
    if latency_ms:
        sections.append(
            (
                "Latency",
                "End-to-end per served feed; the dashed line is the budget after which the "
                "light ranker answers.",
                latency_figure(latency_ms, budget_ms),
            )
        )
    rows = [
        ("day", summary.get("today")),
        ("world", (summary.get("world") or {}).get("plan")),
        ("champion", summary.get("champion")),
        ("feeds served", (summary.get("live") or {}).get("feeds_received")),
        ("seconds", f"{summary.get('seconds', 0):.0f}"),
    ]
    table = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    body = "".join(
        f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>"
        f'<img alt="{html.escape(title)}" src="data:image/png;base64,{image}">'
        for title, text, image in sections
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>feedrank demo report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "th{text-align:left;padding-right:1em}img{max-width:100%}</style></head><body>"
        f"<h1>feedrank demo — {html.escape(str(summary.get('today')))}</h1>"
        f"<table>{table}</table>{body}</body></html>"
    )
    return path
