"""The per-head boosters of ``feedrank train``: one XGBoost model per engagement head.

* Single node (:func:`train_heads_single_node`): ``hist`` trees, ``binary:logistic``, early
  stopping and a small hyperparameter search (depth / learning rate / min_child_weight,
  :func:`search_space`, within ``training.search_budget_s``) chosen by log loss on the
  *selection day*, the last training day (:func:`jobs.train_inputs.selection_rows`), by heads
  fitted on the days before it; never on the held-out day, which the gate then scores. The
  chosen parameters and tree count are then refitted on every training day.
* ``cluster`` profile (or ``distributed=True``, :func:`train_heads_distributed`): the same
  heads are trained with ``xgboost.spark.SparkXGBClassifier`` on the configured Spark master,
  ``num_workers`` tasks, and the booster is taken out of the Spark model into the same UBJ
  artifact. The search is single-node only: the distributed path trains the configured base
  parameters.

Both weight each head's negatives as :func:`jobs.train_inputs.negative_weights` says.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feedrank import feature_spec
from feedrank.config import HEADS, Settings
from jobs.train_inputs import TrainingData, learning_matrix, selection_rows

log = logging.getLogger("feedrank.train")

SEED = 7


@dataclass
class HeadResult:
    """One trained head."""

    booster: Any
    params: dict[str, Any]
    best_iteration: int
    selection_logloss: float  # on the selection day (distributed: the held-out day)
    seconds: float
    tried: list[dict[str, Any]] = field(default_factory=list)
    selected_on: str | None = None  # the rows the trees and parameters were chosen on


def base_params(settings: Settings) -> dict[str, Any]:
    """Booster parameters shared by every head and every search candidate."""
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_depth": settings.training.max_depth,
        "learning_rate": settings.training.learning_rate,
        "min_child_weight": 1.0,
        "nthread": settings.training.nthread,
        "seed": SEED,
        "verbosity": 0,
    }


def search_space(settings: Settings) -> list[dict[str, Any]]:
    """Candidate configurations, the configured one first (always trained).

    A few deliberate alternatives rather than a random grid: shallower and deeper trees,
    and a slower learning rate with more regularisation — the directions that matter for
    tabular engagement data at this size.
    """
    depth, lr = settings.training.max_depth, settings.training.learning_rate
    candidates = [
        {"max_depth": depth, "learning_rate": lr, "min_child_weight": 1.0},
        {"max_depth": max(2, depth - 2), "learning_rate": lr, "min_child_weight": 1.0},
        {"max_depth": depth + 2, "learning_rate": lr, "min_child_weight": 5.0},
        {"max_depth": depth, "learning_rate": lr / 2, "min_child_weight": 10.0},
    ]
    unique: list[dict[str, Any]] = []
    for c in candidates:
        if c not in unique:
            unique.append(c)
    return unique


def _train_one(
    params: dict[str, Any], dtrain: Any, dvalid: Any, settings: Settings
) -> tuple[Any, int, float]:
    import xgboost as xgb

    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=settings.training.n_estimators,
        evals=[(dvalid, "validation")],
        early_stopping_rounds=settings.training.early_stopping_rounds,
        verbose_eval=False,
    )
    best = int(booster.best_iteration)
    return booster, best, float(booster.best_score)


def train_heads_single_node(
    data: TrainingData, settings: Settings, progress: Any | None = None
) -> dict[str, HeadResult]:
    """Train every head on this machine, searching hyperparameters within the budget.

    Candidates are fitted on the training days before the selection day and compared there
    (early stopping too); the best is refitted on all training days with its tree count. The
    budget ``training.search_budget_s`` is shared equally by the heads; each head always
    trains the configured parameters, then further candidates while its share lasts.
    """
    import xgboost as xgb

    features = feature_spec.model_features()
    selection_day, selecting = selection_rows(data.train)
    fitting = ~selecting
    log.info(
        "selecting trees and parameters on %s (%d rows), fitting on %d rows",
        selection_day,
        int(selecting.sum()),
        int(fitting.sum()),
    )
    X_all = learning_matrix(data.train)
    nthread = settings.training.nthread
    # Quantised matrices shared by all heads: bin edges do not depend on the label.
    dfit = xgb.QuantileDMatrix(X_all[fitting], feature_names=features, nthread=nthread)
    dselect = xgb.DMatrix(X_all[selecting], feature_names=features, nthread=nthread)
    dall = xgb.QuantileDMatrix(X_all, feature_names=features, nthread=nthread)
    per_head_budget = settings.training.search_budget_s / len(HEADS)
    space = search_space(settings)
    task = progress.add_task("training heads", total=len(HEADS)) if progress else None
    results: dict[str, HeadResult] = {}
    for head in HEADS:
        labels = data.train[f"label_{head}"].to_numpy(np.float32)
        weights = data.head_weights("train", head).astype(np.float32)
        for matrix, rows in ((dfit, fitting), (dselect, selecting)):
            matrix.set_label(labels[rows])
            matrix.set_weight(weights[rows])
        dall.set_label(labels)
        dall.set_weight(weights)
        start = time.perf_counter()
        best: HeadResult | None = None
        tried: list[dict[str, Any]] = []
        for i, candidate in enumerate(space):
            if i > 0 and time.perf_counter() - start >= per_head_budget:
                break
            params = {**base_params(settings), **candidate}
            t0 = time.perf_counter()
            booster, best_it, loss = _train_one(params, dfit, dselect, settings)
            tried.append(
                {
                    **candidate,
                    "best_iteration": best_it,
                    "selection_logloss": loss,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
            log.info(
                "head %s candidate %s: logloss %.5f at %d trees", head, candidate, loss, best_it + 1
            )
            if best is None or loss < best.selection_logloss:
                best = HeadResult(booster, params, best_it, loss, 0.0)
        assert best is not None
        best.booster = xgb.train(best.params, dall, num_boost_round=best.best_iteration + 1)
        best.selected_on = selection_day
        best.seconds = time.perf_counter() - start
        best.tried = tried
        results[head] = best
        if progress is not None:
            progress.advance(task)
    return results


def train_heads_distributed(
    data_run: Path, settings: Settings, negative_keep_rate: float, progress: Any | None = None
) -> dict[str, HeadResult]:
    """Train every head with ``xgboost.spark.SparkXGBClassifier`` on the configured master.

    Reads the run with Spark (the data never has to fit on the driver), marks the validation
    day with an indicator column for early stopping, and keeps the booster of each fitted
    Spark model, sliced to its best iteration.
    """
    import xgboost as xgb
    from pyspark.sql import functions as F
    from xgboost.spark import SparkXGBClassifier

    from feedrank.spark import get_spark

    features = feature_spec.model_features()
    spark = get_spark("feedrank-train", settings)
    train = spark.read.parquet(str(data_run / "train")).withColumn("is_validation", F.lit(False))
    valid = spark.read.parquet(str(data_run / "validation")).withColumn(
        "is_validation", F.lit(True)
    )
    keep = feature_spec.KEEP_PROB_COLUMN
    columns = [*features, *feature_spec.LABEL_COLUMNS, keep, "is_validation"]
    frame = train.select(*columns).unionByName(valid.select(*columns))
    frame = (
        frame.select(
            # One array column, not a list of columns: xgboost 3.2's multi-column path fails
            # on an Arrow batch that holds no validation row (KeyError 'values' in
            # xgboost/spark/data.py). Missing values must be NaN inside an array, not null.
            F.array(
                *[
                    F.lit(float("nan"))
                    if c in feature_spec.NOT_LEARNED
                    else F.coalesce(F.col(c).cast("float"), F.lit(float("nan")))
                    for c in features
                ]
            ).alias("features"),
            *[F.col(c).cast("int").alias(c) for c in feature_spec.LABEL_COLUMNS],
            # The same per-head negative weights as the single-node path (negative_weights).
            *[
                F.when(F.col(f"label_{h}") > 0, F.lit(1.0))
                .otherwise(F.lit(float(negative_keep_rate)) / F.col(keep))
                .alias(f"weight_{h}")
                for h in HEADS
            ],
            "is_validation",
        )
        .repartition(settings.training.num_workers)
        .cache()
    )
    frame.count()
    task = (
        progress.add_task("training heads (xgboost.spark)", total=len(HEADS)) if progress else None
    )
    base = base_params(settings)
    results: dict[str, HeadResult] = {}
    try:
        for head in HEADS:
            start = time.perf_counter()
            estimator = SparkXGBClassifier(
                features_col="features",
                label_col=f"label_{head}",
                weight_col=f"weight_{head}",
                validation_indicator_col="is_validation",
                num_workers=settings.training.num_workers,
                n_estimators=settings.training.n_estimators,
                early_stopping_rounds=settings.training.early_stopping_rounds,
                max_depth=base["max_depth"],
                learning_rate=base["learning_rate"],
                min_child_weight=base["min_child_weight"],
                tree_method="hist",
                eval_metric="logloss",
                missing=float("nan"),
                random_state=SEED,
            )
            model = estimator.fit(frame)
            raw = model.get_booster()
            # Round-trip through bytes: a standalone booster independent of the Spark model.
            booster = xgb.Booster(model_file=bytearray(raw.save_raw("ubj")))
            best_it = (
                int(raw.best_iteration)
                if raw.attr("best_iteration") is not None
                else booster.num_boosted_rounds() - 1
            )
            best_score = float(raw.attr("best_score") or "nan")
            booster = booster[: best_it + 1]
            booster.feature_names = features
            results[head] = HeadResult(
                booster=booster,
                params={**base, "num_workers": settings.training.num_workers},
                best_iteration=best_it,
                selection_logloss=best_score,
                seconds=time.perf_counter() - start,
            )
            log.info(
                "head %s (xgboost.spark): %d trees in %.1f s",
                head,
                best_it + 1,
                results[head].seconds,
            )
            if progress is not None:
                progress.advance(task)
    finally:
        frame.unpersist()
    return results
