"""``feedrank train``: one XGBoost model per engagement head plus the light ranker.

The run shell: :func:`train` reads a training-data run, trains, saves the model folder
(:func:`feedrank.model_files.save_model`) and logs an MLflow run (:mod:`feedrank.tracking`)
with the parameters, the validation metrics, the training data's manifest and the folder.
Its steps, one module each:

* :mod:`jobs.train_inputs` — the run read and checked against the feature contract, the
  per-head negative weights that undo downsampling, the feature matrices;
* :mod:`jobs.train_heads` — the boosters, single node with a small search or ``xgboost.spark``
  (``cluster`` profile or ``distributed=True``);
* :mod:`jobs.train_calibration` — the optional day-ahead Platt map per head;
* :mod:`jobs.train_light_ranker` — the light ranker distilled from the heads.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedrank import feature_spec, model_files, tracking
from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.exporter import record_outcome, record_time
from jobs.train_calibration import fit_day_ahead_calibration
from jobs.train_heads import HeadResult, train_heads_distributed, train_heads_single_node
from jobs.train_inputs import (
    TrainingData,
    feature_matrix,
    load_training_data,
    resolve_run,
)
from jobs.train_light_ranker import train_light_ranker

log = logging.getLogger("feedrank.train")


def _session_master() -> str | None:
    """Master URL of the active SparkSession (``None`` when none is active)."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    return session.sparkContext.master if session else None


@dataclass
class TrainResult:
    """What ``feedrank train`` produced."""

    version: str
    path: Path
    trainer: str
    seconds: float
    heads: dict[str, HeadResult]
    mlflow_run_id: str | None = None


def _validation_auc(boosters: dict[str, Any], data: TrainingData) -> dict[str, dict[str, float]]:
    from sklearn.metrics import roc_auc_score

    X = feature_matrix(data.validation)
    out = {}
    for head, booster in boosters.items():
        y = data.validation[f"label_{head}"].to_numpy()
        p = booster.inplace_predict(X)
        out[head] = {
            "validation_auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
        }
    return out


def log_training_run(
    settings: Settings,
    run_id: str,
    data: TrainingData,
    training: dict[str, Any],
    metrics: dict[str, Any],
    model_dir: Path,
) -> None:
    """Log one training run: parameters, validation metrics, the manifest, the model folder."""
    params: dict[str, Any] = {
        "trainer": training["trainer"],
        "training_data.run": data.run_dir.name,
        "training_data.manifest_sha256": data.manifest_sha256,
        "training_data.negative_keep_rate": data.negative_keep_rate,
        "training_data.rows_train": len(data.train),
        "training_data.rows_validation": len(data.validation),
        "training.day_ahead_calibration": settings.training.day_ahead_calibration,
        "ranking.weights": dict(settings.ranking.weights),
        **{f"{h}.{k}": v for h, r in training["heads"].items() for k, v in r["params"].items()},
    }
    tree_counts = {h: {"trees": r["trees"]} for h, r in training["heads"].items()}
    tracking.log_to_run(
        settings,
        run_id,
        params=params,
        metrics={"train": tracking.flatten(metrics) | tracking.flatten(tree_counts)},
        artifacts={
            "training_data": data.run_dir / feature_spec.TRAINING_MANIFEST,
            tracking.MODEL_ARTIFACT: model_dir,
        },
    )
    tracking.end_run(settings, run_id)


def train(
    settings: Settings,
    data: str | Path | None = None,
    version: str | None = None,
    distributed: bool | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train every head and the light ranker, save the model folder, log the MLflow run.

    Args:
        settings: Resolved settings.
        data: Training-data run (directory, run id, or ``None`` for the latest).
        version: Model version name (default: a timestamp).
        distributed: Use ``xgboost.spark``; default: ``settings.profile == "cluster"``.
        show_progress: Show a progress bar on stderr.

    Returns:
        The saved version, its directory, the trainer used, the wall time, the run id.
    """
    from rich.progress import Progress

    version = model_files.validate_version(version or model_files.new_version())
    if model_files.version_dir(settings, version).exists():
        raise FeedrankError(f"model version {version} already exists")
    distributed = settings.profile == "cluster" if distributed is None else distributed
    run_dir = resolve_run(settings, data)
    log.info("training from %s (distributed=%s)", run_dir, distributed)
    start = time.perf_counter()
    training_data = load_training_data(run_dir)
    with Progress(transient=True, disable=not show_progress) as progress:
        if distributed:
            heads = train_heads_distributed(
                run_dir, settings, training_data.negative_keep_rate, progress
            )
        else:
            heads = train_heads_single_node(training_data, settings, progress)
    boosters = {h: r.booster for h, r in heads.items()}
    calibration: dict[str, Any] = {"method": None, "heads": {}, "skipped": "disabled"}
    if settings.training.day_ahead_calibration:
        calibration = fit_day_ahead_calibration(training_data, heads, settings)
    light = train_light_ranker(training_data, boosters, settings, calibration["heads"])
    seconds = time.perf_counter() - start
    trainer = "xgboost.spark" if distributed else "single-node"
    aucs = _validation_auc(boosters, training_data)
    run_id = tracking.start_run(settings, version, {tracking.VERSION_TAG: version})
    training_record = {
        "trainer": trainer,
        "seconds": round(seconds, 3),
        # The session's own master: spark-submit's when it set one, else the profile's.
        "spark_master": _session_master() if distributed else None,
        "heads": {
            h: {
                "params": r.params,
                "best_iteration": r.best_iteration,
                "trees": r.best_iteration + 1,
                "selected_on": r.selected_on,
                "seconds": round(r.seconds, 3),
                "search": r.tried,
            }
            for h, r in heads.items()
        },
        "mlflow_run_id": run_id,
    }
    metrics = {
        h: {"selection_logloss_downsampled": r.selection_logloss, **aucs[h]}
        for h, r in heads.items()
    }
    try:
        path = model_files.save_model(
            settings,
            boosters=boosters,
            light_ranker=light,
            keep_rates=training_data.recalibration_rates(),
            training_data={
                **training_data.summary(),
                "manifest_keep_rates": training_data.keep_rates,
                "negative_keep_rate": training_data.negative_keep_rate,
            },
            training=training_record,
            metrics=metrics,
            version=version,
            calibration=calibration,
        )
        log_training_run(settings, run_id, training_data, training_record, metrics, path)
    except BaseException:
        tracking.end_run(settings, run_id, "FAILED")
        raise
    log.info("saved model %s in %.1f s (%s), MLflow run %s", path.name, seconds, trainer, run_id)
    record_time(
        settings,
        "feedrank_batch_last_trained_timestamp_seconds",
        "When a model version was last trained and saved.",
    )
    days = [
        *(training_data.manifest.get("train_dates") or []),
        *(training_data.manifest.get("validation_dates") or []),
    ]
    if days:
        last_day = dt.datetime.fromisoformat(max(days)).replace(tzinfo=dt.UTC)
        record_outcome(
            settings,
            "feedrank_batch_last_trained_day_timestamp_seconds",
            "Last data day (UTC midnight) of the most recently trained model's training data.",
            last_day.timestamp(),
        )
    return TrainResult(path.name, path, trainer, seconds, heads, run_id)
