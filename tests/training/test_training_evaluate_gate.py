"""Evaluation against baselines and the oracle, and the promotion gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feedrank.config import HEADS, Settings
from feedrank.errors import FeedrankError
from feedrank.exporter import read_outcomes
from feedrank.tracking import champion_version, set_champion
from jobs.evaluate import evaluate
from jobs.evaluate_gate import promote
from jobs.train import train

pytestmark = pytest.mark.unit
FEEDRANK = str(Path(sys.executable).parent / "feedrank")


@pytest.fixture(scope="module")
def evaluation(train_settings: Settings, trained):
    return evaluate(train_settings, trained.version)


def test_metrics_json_has_every_head_metric_and_ranker(evaluation) -> None:
    metrics, report = evaluation
    on_disk = json.loads((report.parent / "metrics.json").read_text())
    assert on_disk == metrics
    for head in HEADS:
        for key in ("auc", "pr_auc", "logloss", "rce", "calibration", "oracle_auc", "oracle_rce"):
            assert isinstance(metrics["heads"][head][key], float), (head, key)
    for ranker in ("model", "oracle", "chronological", "popularity", "light"):
        assert 0 < metrics["ndcg10"][ranker] <= 1, ranker
    for plot in ("roc.png", "calibration.png", "rce_vs_oracle.png", "feature_importance.png"):
        assert (report.parent / plot).stat().st_size > 1000, plot
    assert "| like |" in report.read_text()


def test_model_beats_the_old_orders_and_trails_the_oracle(evaluation) -> None:
    metrics, _ = evaluation
    ndcg = metrics["ndcg10"]
    assert ndcg["model"] > ndcg["chronological"] + 0.02
    assert ndcg["model"] > ndcg["popularity"] + 0.02
    assert ndcg["light"] > ndcg["chronological"]
    for head in ("like", "click"):
        m = metrics["heads"][head]
        assert 0 < m["rce"] <= m["oracle_rce"] + 1.0
        assert m["auc"] <= m["oracle_auc"] + 0.01


def test_calibration_by_decile_covers_every_impression(evaluation) -> None:
    metrics, report = evaluation
    for head in HEADS:
        for policy in ("model", "oracle"):
            deciles = metrics["calibration_deciles"][head][policy]
            assert 2 <= len(deciles) <= 10, (head, policy)
            assert sum(d["impressions"] for d in deciles) == metrics["rows_reweighted"]
            predicted = [d["predicted"] for d in deciles]
            assert predicted == sorted(predicted), (head, policy)
        worst = max(d["relative_error"] for d in metrics["calibration_deciles"][head]["model"])
        assert 0 <= metrics["heads"][head]["calibration_decile_max_error"] <= worst
    assert "## Calibration by decile" in report.read_text()


def test_oracle_is_calibrated_on_the_reweighted_rows(evaluation) -> None:
    # The oracle's probabilities are the truth: if re-weighting by 1/keep_prob were wrong,
    # its calibration would be off by the downsampling factor (~2x here).
    metrics, _ = evaluation
    for head in ("like", "click"):
        assert metrics["heads"][head]["oracle_calibration"] == pytest.approx(1.0, abs=0.1)


def test_gate_promotes_a_sane_model_and_refuses_a_shuffled_one(
    train_settings: Settings, trained, shuffled_run: Path, synthetic_run: Path
) -> None:
    decision = promote(train_settings, trained.version)
    assert decision["promoted"] and champion_version(train_settings) == "good"
    shuffled = train(train_settings, data=shuffled_run, version="shuffled", show_progress=False)
    with pytest.raises(FeedrankError, match=r"promotion of shuffled refused: "):
        promote(train_settings, shuffled.version, data=synthetic_run)
    assert champion_version(train_settings) == "good"
    record = json.loads((train_settings.paths.reports / "shuffled" / "promotion.json").read_text())
    assert record["promoted"] is False and record["champion"] == "good"
    # The one-line error names the first failure; labels without signal must fail on AUC.
    assert any(" AUC " in failure for failure in record["failures"]), record["failures"]
    # The outcomes Prometheus scrapes (feedrank batch-metrics): trained, promoted, refused.
    outcomes = read_outcomes(train_settings)
    for name in (
        "feedrank_batch_last_trained_timestamp_seconds",
        "feedrank_batch_last_trained_day_timestamp_seconds",
        "feedrank_batch_last_promoted_timestamp_seconds",
        "feedrank_batch_champion_data_day_timestamp_seconds",
    ):
        [[labels, value]] = outcomes[name]["samples"]
        assert labels == {} and value > 1.7e9, name
    assert outcomes["feedrank_batch_promotions_refused_total"]["samples"][0][1] >= 1


def test_gate_refuses_a_challenger_worse_than_the_champion(
    train_settings: Settings, trained, synthetic_run: Path
) -> None:
    set_champion(train_settings, trained.version)
    weak_settings = train_settings.model_copy(
        update={
            "training": train_settings.training.model_copy(
                update={"n_estimators": 3, "max_depth": 2}
            )
        }
    )
    weak = train(weak_settings, data=synthetic_run, version="weak", show_progress=False)
    with pytest.raises(FeedrankError, match=r"mean RCE .* < champion good"):
        promote(train_settings, weak.version)
    assert champion_version(train_settings) == "good"
    # Ties pass: the champion re-promoted against itself on the same rows.
    assert promote(train_settings, trained.version)["promoted"]


@pytest.mark.integration
def test_cli_refusal_is_one_line_and_non_zero(train_settings: Settings) -> None:
    env = {**os.environ, "FEEDRANK_PATHS__HOME": str(train_settings.paths.home)}
    done = subprocess.run(
        [FEEDRANK, "promote", "--version", "no-such-version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("feedrank: error: no model no-such-version")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("calibration", "positives", "refused"),
    [
        (1.26, 100, False),  # 2·1.26/√100 = 0.25 of slack: the labels alone move it this much
        (1.30, 10_000, True),  # slack 0.026: 1.30 is the model, not the draw
        (1.60, 100, True),  # beyond tolerance and slack
        (0.70, 1_000, True),
        (1.10, 0, False),
    ],
)
def test_gate_calibration_allows_the_held_out_days_sampling_error(
    settings: Settings, calibration: float, positives: int, refused: bool
) -> None:
    from jobs.evaluate_gate import sanity_failures

    sane = {"auc": 0.7, "pr_auc": 0.1, "logloss": 0.2, "rce": 5.0, "calibration": 1.0}
    metrics = {"heads": {head: {**sane, "positives": 10_000.0} for head in HEADS}}
    metrics["heads"]["negative"].update(calibration=calibration, positives=float(positives))
    failures = sanity_failures(metrics, settings)
    assert bool(failures) == refused, failures
    assert all(f.startswith("negative calibration") for f in failures)
