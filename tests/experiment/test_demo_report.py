"""``report.html``: the demo's figures, embedded, in one page."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import matplotlib
import pytest

from feedrank.demo_report import write_report_html

matplotlib.use("Agg")


def _interval(estimate: float, half: float) -> dict[str, float]:
    return {"estimate": estimate, "low": estimate - half, "high": estimate + half}


def _ranker(share: float) -> dict[str, float]:
    return {"share_of_oracle": share, "share_ci_low": share - 0.03, "share_ci_high": share + 0.03}


SUMMARY = {
    "today": "2026-12-06",
    "world": {"plan": "a new world <9 days>"},
    "champion": "v20261205-abc",
    "live": {"feeds_received": 600},
    "seconds": 420.0,
    "counterfactual": {
        "chronological": _ranker(0.0),
        "light": _ranker(0.5),
        "champion": _ranker(0.69),
        "oracle": _ranker(1.0),
    },
    "experiment": {
        "control": "control",
        "arms": {
            arm: {"weighted_engagements": {"lift_vs_control": _interval(lift, 0.3)}}
            for arm, lift in (("control", 0.0), ("treatment", 1.3), ("oracle", 1.8))
        },
    },
}
METRICS = {"ndcg10": {"chronological": 0.49, "light": 0.6, "model": 0.64, "oracle": 0.69}}


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(x) for x in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


@pytest.mark.unit
def test_report_embeds_every_figure_as_a_png(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    calibration = tmp_path / "calibration.png"
    fig, _ = plt.subplots()
    fig.savefig(calibration)
    plt.close(fig)
    latency = {"control": [12.0, 15.0, 80.0], "treatment": [19.0, 25.0, 320.0]}
    page = write_report_html(
        tmp_path / "r" / "report.html", SUMMARY, METRICS, latency, 300, calibration
    ).read_text()
    images = _images(page)
    assert len(images) == 4 and all(img.startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    assert images[0] == calibration.read_bytes()  # the evaluation's plot, embedded as is
    titles = re.findall(r"<h2>([^<]+)</h2>", page)
    assert titles == ["Calibration per head", "NDCG@10 by ranker", "Online lift", "Latency"]
    assert "a new world &lt;9 days&gt;" in page and "v20261205-abc" in page


@pytest.mark.unit
def test_report_leaves_out_what_the_run_did_not_produce(tmp_path: Path) -> None:
    page = write_report_html(
        tmp_path / "report.html", SUMMARY, {}, {}, 300, tmp_path / "missing.png"
    ).read_text()
    assert re.findall(r"<h2>([^<]+)</h2>", page) == ["Online lift"]
    assert len(_images(page)) == 1
