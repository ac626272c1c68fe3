"""``feedrank train``: one XGBoost model per engagement head plus the light ranker.

Long because: one training run (matrices, per-head boosters, calibration, light ranker, model
record) shares its state; splitting it is open (issue 23).

Input is a run of ``feedrank training-data`` (``<paths.training>/<run_id>/{train,validation}``
+ ``manifest.json``, layout in :mod:`feedrank.feature_spec`). Output is a model folder
(:func:`feedrank.model_files.save_model`) and an MLflow run (:mod:`feedrank.tracking`) that
logs the parameters, the validation metrics, the training data's manifest and the folder.

* Features are exactly ``feature_spec.model_features()``, in that order; a run whose columns
  or manifest disagree with the contract is refused.
* The ``feature_spec.NOT_LEARNED`` columns (an absolute time) are masked to missing before
  fitting (:func:`learning_matrix`), so the heads cannot split on them.
* ``training.day_ahead_calibration`` (off by default, docs/quality.md): a per-head Platt map
  fitted on the last training day (:func:`fit_day_ahead_calibration`), stored in the model.
* Each head: ``hist`` trees, ``binary:logistic``, early stopping on the validation day, and a
  small hyperparameter search (depth / learning rate / min_child_weight) chosen on validation
  log loss within ``training.search_budget_s``. The saved booster is sliced to its best
  iteration, so every consumer predicts with exactly the trees that were selected.
* Recalibration for negative downsampling. The training-data job keeps every impression with
  *any* positive and a share ``r`` (``negative_keep_rate``) of the all-negative ones, so a
  row negative for head h survives with probability 1 when another head is positive and ``r``
  otherwise — a rate that varies with the features (rows likely to be liked are likely to be
  retweeted too). One constant ``w`` per head (the manifest's effective ``keep_rates``) then
  cannot undo it: measured on held-out data, retweet came out at 0.81× the true rate. So each
  head's negatives are weighted ``r / keep_prob`` (positives 1): the head then sees its
  negatives sampled uniformly at ``r``, and ``q = p / (p + (1 − p)/r)`` (applied by the
  model) is exact. The manifest's per-head rates are kept in the metadata for provenance.
* ``cluster`` profile (or ``distributed=True``): the same heads are trained with
  ``xgboost.spark.SparkXGBClassifier`` on the configured Spark master, ``num_workers`` tasks,
  and the booster is taken out of the Spark model into the same UBJ artifact. The search is
  single-node only: the distributed path trains the configured base parameters.
* The light ranker is distilled from the trained heads: a ridge regression of their
  weighted score (``ranking.weights``) on ``LIGHT_RANKER_FEATURES`` over the training rows
  (:func:`distill_light_ranker`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feedrank import feature_spec, model_files, tracking
from feedrank.config import HEADS, Settings
from feedrank.errors import FeedrankError
from feedrank.exporter import record_outcome, record_time
from feedrank.model import DayAheadCalibration, LightRanker, head_probabilities

log = logging.getLogger("feedrank.train")

MANIFEST = "manifest.json"
SPLITS = ("train", "validation")
LIGHT_TARGET = "heavy_weighted_score"
SEED = 7


@dataclass
class TrainingData:
    """A loaded training-examples run."""

    run_dir: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    train: pd.DataFrame
    validation: pd.DataFrame
    keep_rates: dict[str, float]  # the manifest's effective per-head rates (provenance)
    negative_keep_rate: float  # r: the rate every head's weighted negatives are sampled at

    def recalibration_rates(self) -> dict[str, float]:
        """The keep-rate ``w`` per head for ``q = p / (p + (1 − p)/w)`` (see module doc)."""
        return {h: self.negative_keep_rate for h in HEADS}

    def head_weights(self, split: str, head: str) -> np.ndarray:
        """Sample weights that make ``head``'s negatives uniformly sampled at ``r``."""
        frame = getattr(self, split)
        return negative_weights(
            frame[f"label_{head}"].to_numpy(),
            frame[feature_spec.KEEP_PROB_COLUMN].to_numpy(),
            self.negative_keep_rate,
        )

    def summary(self) -> dict[str, Any]:
        """What the model metadata records about its training data."""
        return {
            "run": str(self.run_dir),
            "run_id": self.run_dir.name,
            "manifest_sha256": self.manifest_sha256,
            "rows": {"train": len(self.train), "validation": len(self.validation)},
            "train_dates": self.manifest.get("train_dates"),
            "validation_dates": self.manifest.get("validation_dates"),
        }


@dataclass
class HeadResult:
    """One trained head."""

    booster: Any
    params: dict[str, Any]
    best_iteration: int
    validation_logloss: float
    seconds: float
    tried: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def _validation_end(run_dir: Path) -> str:
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
        return max(manifest.get("validation_dates") or [""])
    except (OSError, ValueError):
        return ""


def resolve_run(settings: Settings, data: str | Path | None) -> Path:
    """The training-examples run to use.

    Args:
        settings: Resolved settings (``paths.training``).
        data: A run directory, a run id under ``paths.training``, or ``None``/``"latest"``
            for the run with the latest validation date (newest directory on ties).

    Raises:
        FeedrankError: No such run, or no run at all.
    """
    root = settings.paths.training
    if data is None or str(data) == "latest":
        runs = [p for p in root.glob("*") if (p / MANIFEST).is_file()] if root.is_dir() else []
        if not runs:
            raise FeedrankError(f"no training-data run under {root}; run 'feedrank training-data'")
        return max(runs, key=lambda p: (_validation_end(p), p.stat().st_mtime))
    path = Path(data)
    if not path.is_absolute() and not path.exists():
        path = root / str(data)
    if not (path / MANIFEST).is_file():
        raise FeedrankError(f"{path} is not a training-data run (no {MANIFEST})")
    return path


def _read_split(run_dir: Path, split: str) -> pd.DataFrame:
    folder = run_dir / split
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        raise FeedrankError(f"training-data run {run_dir.name} has no {split} parquet files")
    df = pd.read_parquet(folder)
    missing = [c for c in feature_spec.training_columns() if c not in df.columns]
    if missing:
        raise FeedrankError(
            f"{folder} lacks {len(missing)} column(s) of {feature_spec.FEATURE_SERVICE}: "
            f"{', '.join(missing[:5])}"
        )
    for col in feature_spec.LABEL_COLUMNS:
        if not df[col].isin((0, 1)).all():
            raise FeedrankError(f"{folder}: {col} must be 0/1")
    keep = df[feature_spec.KEEP_PROB_COLUMN]
    if not ((keep > 0) & (keep <= 1)).all():
        raise FeedrankError(f"{folder}: {feature_spec.KEEP_PROB_COLUMN} must be in (0, 1]")
    return df


def negative_weights(labels: np.ndarray, keep_prob: np.ndarray, rate: float) -> np.ndarray:
    """``rate / keep_prob`` for negatives, 1 for positives (see the module docstring)."""
    keep_prob = np.asarray(keep_prob, dtype=np.float64)
    return np.where(np.asarray(labels) > 0, 1.0, rate / keep_prob)


def effective_keep_rate(labels: np.ndarray, keep_prob: np.ndarray) -> float:
    """Negative keep-rate of one target: kept negatives / their Horvitz-Thompson count."""
    neg = np.asarray(labels) == 0
    if not neg.any():
        return 1.0
    return float(neg.sum() / (1.0 / np.asarray(keep_prob, dtype=np.float64)[neg]).sum())


def load_training_data(run_dir: Path) -> TrainingData:
    """Read and verify a training-examples run against the feature contract.

    Raises:
        FeedrankError: Missing split, missing columns, a manifest for another contract,
            labels that are not 0/1, or keep-rates outside (0, 1].
    """
    manifest_path = run_dir / MANIFEST
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FeedrankError(f"corrupted {manifest_path} ({exc})") from exc
    features = manifest.get("features")
    if features is not None and list(features) != feature_spec.model_features():
        raise FeedrankError(
            f"training-data run {run_dir.name} was built for another feature contract "
            f"({len(features)} features; {feature_spec.FEATURE_SERVICE} has "
            f"{len(feature_spec.model_features())})"
        )
    service = manifest.get("feature_service")
    if service is not None and service != feature_spec.FEATURE_SERVICE:
        raise FeedrankError(f"training-data run {run_dir.name} is for FeatureService {service}")
    train, validation = (_read_split(run_dir, split) for split in SPLITS)
    if validation.empty or train.empty:
        raise FeedrankError(f"training-data run {run_dir.name} has an empty split")
    keep_rates = manifest.get("keep_rates") or {}
    if set(keep_rates) != set(HEADS):
        # Older manifests: the same estimate the training-data job records.
        keep_rates = {
            h: effective_keep_rate(
                train[f"label_{h}"].to_numpy(), train[feature_spec.KEEP_PROB_COLUMN].to_numpy()
            )
            for h in HEADS
        }
        log.warning("manifest has no keep_rates; estimated from keep_prob: %s", keep_rates)
    keep_rates = {h: float(keep_rates[h]) for h in HEADS}
    if not all(0 < w <= 1 for w in keep_rates.values()):
        raise FeedrankError(f"manifest keep_rates must be in (0, 1]: {keep_rates}")
    rate = manifest.get("negative_keep_rate")
    if rate is None:
        # Older manifests: all-negative rows carry the configured rate as their keep_prob.
        rate = float(train[feature_spec.KEEP_PROB_COLUMN].min())
    if not 0 < float(rate) <= 1:
        raise FeedrankError(f"manifest negative_keep_rate must be in (0, 1]: {rate}")
    for head in HEADS:
        if train[f"label_{head}"].sum() == 0:
            raise FeedrankError(f"training-data run {run_dir.name}: no positive {head} in train")
    return TrainingData(
        run_dir=run_dir,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        train=train,
        validation=validation,
        keep_rates=keep_rates,
        negative_keep_rate=float(rate),
    )


def feature_matrix(df: pd.DataFrame) -> np.ndarray:
    """The model input: ``model_features()`` columns as a C-contiguous float32 matrix."""
    return np.ascontiguousarray(df[feature_spec.model_features()].to_numpy(dtype=np.float32))


def learning_matrix(df: pd.DataFrame) -> np.ndarray:
    """:func:`feature_matrix` with the ``NOT_LEARNED`` columns missing, for fitting only.

    A column that is missing on every training row offers no split, so the trees never use
    it and its values at prediction time do not matter.
    """
    X = feature_matrix(df)
    names = feature_spec.model_features()
    for name in feature_spec.NOT_LEARNED:
        X[:, names.index(name)] = np.nan
    return X


# --------------------------------------------------------------------------- heads


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

    The budget ``training.search_budget_s`` is shared equally by the heads; each head always
    trains the configured parameters, then further candidates while its share lasts.
    """
    import xgboost as xgb

    features = feature_spec.model_features()
    X_tr, X_va = learning_matrix(data.train), learning_matrix(data.validation)
    # One quantised training matrix for all heads: bin edges do not depend on the label.
    dtrain = xgb.QuantileDMatrix(
        X_tr,
        label=data.train["label_like"].to_numpy(np.float32),
        feature_names=features,
        nthread=settings.training.nthread,
    )
    dvalid = xgb.DMatrix(
        X_va,
        label=data.validation["label_like"].to_numpy(np.float32),
        feature_names=features,
        nthread=settings.training.nthread,
    )
    per_head_budget = settings.training.search_budget_s / len(HEADS)
    space = search_space(settings)
    task = progress.add_task("training heads", total=len(HEADS)) if progress else None
    results: dict[str, HeadResult] = {}
    for head in HEADS:
        dtrain.set_label(data.train[f"label_{head}"].to_numpy(np.float32))
        dtrain.set_weight(data.head_weights("train", head).astype(np.float32))
        dvalid.set_label(data.validation[f"label_{head}"].to_numpy(np.float32))
        dvalid.set_weight(data.head_weights("validation", head).astype(np.float32))
        start = time.perf_counter()
        best: HeadResult | None = None
        tried: list[dict[str, Any]] = []
        for i, candidate in enumerate(space):
            if i > 0 and time.perf_counter() - start >= per_head_budget:
                break
            params = {**base_params(settings), **candidate}
            t0 = time.perf_counter()
            booster, best_it, loss = _train_one(params, dtrain, dvalid, settings)
            tried.append(
                {
                    **candidate,
                    "best_iteration": best_it,
                    "validation_logloss": loss,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
            log.info(
                "head %s candidate %s: logloss %.5f at %d trees", head, candidate, loss, best_it + 1
            )
            if best is None or loss < best.validation_logloss:
                best = HeadResult(booster, params, best_it, loss, 0.0)
        assert best is not None
        best.booster = best.booster[: best.best_iteration + 1]
        best.seconds = time.perf_counter() - start
        best.tried = tried
        results[head] = best
        if progress is not None:
            progress.advance(task)
    return results


def _session_master() -> str | None:
    """Master URL of the active SparkSession (``None`` when none is active)."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    return session.sparkContext.master if session else None


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
                validation_logloss=best_score,
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


# --------------------------------------------------------------------------- calibration


def fit_day_ahead_calibration(
    data: TrainingData, heads: dict[str, HeadResult], settings: Settings
) -> dict[str, Any]:
    """Per-head Platt calibration fitted on the last training day, scored day-ahead.

    The final heads have seen every training day, so their output on the last one says
    nothing about the next day. Heads with the same parameters and tree count, trained on
    the days before it, score it instead: what they get wrong there (the shift from one day
    to the next: a growing history, a day's own level) is what the final heads will get
    wrong on the held-out day. A logistic regression of the day's labels on
    ``logit(q)`` (``q`` recalibrated for downsampling; every row weighted ``1/keep_prob`` so
    the day counts at its true rate) gives ``slope`` and ``intercept`` per head.

    Returns:
        The record :func:`feedrank.model_files.save_model` stores: ``heads`` (``{head:
        DayAheadCalibration}``, empty when the window has a single training day or the day
        has no positive of a head) and how it was fitted.
    """
    import xgboost as xgb
    from sklearn.linear_model import LogisticRegression

    days = pd.to_datetime(data.train["served_at"], utc=True).dt.strftime("%Y-%m-%d")
    last = days.max()
    earlier = (days < last).to_numpy()
    record: dict[str, Any] = {"method": "platt", "fitted_on": last, "heads": {}}
    if not earlier.any():
        record["skipped"] = "one training day: no day to score day-ahead"
        return record
    fit_rows, cal_rows = data.train[earlier], data.train[~earlier]
    dfit = xgb.QuantileDMatrix(
        learning_matrix(fit_rows),
        feature_names=feature_spec.model_features(),
        nthread=settings.training.nthread,
    )
    X_cal = learning_matrix(cal_rows)
    row_weight = 1.0 / cal_rows[feature_spec.KEEP_PROB_COLUMN].to_numpy(dtype=np.float64)
    rate = data.negative_keep_rate
    for head, result in heads.items():
        y = cal_rows[f"label_{head}"].to_numpy()
        if not 0 < y.sum() < len(y):
            continue
        dfit.set_label(fit_rows[f"label_{head}"].to_numpy(np.float32))
        dfit.set_weight(
            negative_weights(
                fit_rows[f"label_{head}"].to_numpy(),
                fit_rows[feature_spec.KEEP_PROB_COLUMN].to_numpy(),
                rate,
            ).astype(np.float32)
        )
        params = {k: v for k, v in result.params.items() if k != "num_workers"}
        booster = xgb.train(params, dfit, num_boost_round=result.best_iteration + 1)
        q = head_probabilities({head: booster}, X_cal, {head: rate})[head]
        q = np.clip(q, 1e-12, 1.0 - 1e-12)
        z = np.log(q / (1.0 - q)).reshape(-1, 1)
        # No penalty: two parameters on a day of rows need none, and a penalty would pull
        # the slope towards 0.
        platt = LogisticRegression(C=np.inf, solver="lbfgs")
        platt.fit(z, y, sample_weight=row_weight)
        slope, intercept = float(platt.coef_[0, 0]), float(platt.intercept_[0])
        if slope <= 0:
            log.warning("head %s: day-ahead calibration slope %.3f; left out", head, slope)
            continue
        record["heads"][head] = DayAheadCalibration(slope, intercept)
        log.info("head %s: day-ahead calibration slope %.3f intercept %.3f", head, slope, intercept)
    return record


# --------------------------------------------------------------------------- light ranker


def distill_light_ranker(X: np.ndarray, heavy_scores: np.ndarray) -> LightRanker:
    """A linear light ranker fitted to the heavy ranker's weighted score of the same rows.

    The light ranker's job is to prune the candidates the heavy ranker would rank low, so it
    learns the heavy ranker's objective, not an engagement of its own. Measured on the last
    300 feed requests of ``make demo`` (~460 candidates each), keeping half of them by light
    score: 87% of the heavy ranker's top 50 survive, against 79% under the former logistic
    regression for "any positive engagement" and 45% under random pruning (a quarter: 52%,
    41%, 21%). On an older demo world (~720 candidates) the logistic regression did worse
    than random at half (41% against 51%); the distillation kept 59%.

    NaN (unknown entity) is filled with the column's median, so an unknown author neither
    wins nor loses by default; the fill values travel in the artifact so serving fills
    identically. Inputs are standardised so the stored coefficients are comparable.

    Args:
        X: ``(n, len(model_features()))`` rows in that order, NaN for missing; the light
            ranker reads its ``LIGHT_RANKER_FEATURES`` columns.
        heavy_scores: The heavy ranker's weighted score of each row.
    """
    from sklearn.linear_model import Ridge

    names = feature_spec.LIGHT_RANKER_FEATURES
    columns = [feature_spec.model_features().index(name) for name in names]
    X = np.asarray(X[:, columns], dtype=np.float64)
    fill = np.nanmedian(X, axis=0)
    fill = np.where(np.isnan(fill), 0.0, fill)
    X = np.where(np.isnan(X), fill, X)
    mean, scale = X.mean(axis=0), X.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    model = Ridge(alpha=1.0)
    model.fit((X - mean) / scale, heavy_scores)
    return LightRanker(
        features=tuple(names),
        coef=tuple(float(c) for c in model.coef_),
        intercept=float(model.intercept_),
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        fill_values=tuple(float(v) for v in fill),
        target=LIGHT_TARGET,
        kind="linear_regression",
    )


def train_light_ranker(
    data: TrainingData,
    boosters: dict[str, Any],
    settings: Settings,
    calibration: dict[str, DayAheadCalibration] | None = None,
) -> LightRanker:
    """The light ranker distilled from the trained heads on the training rows.

    The heavy score is the ranking weights (``ranking.weights``) over the recalibrated head
    probabilities, as serving computes it. The rows count as they are: weighting the
    downsampled negatives back to their true share kept fewer of the heavy top 50 on the
    older demo world of :func:`distill_light_ranker` (55% instead of 59%).
    """
    from feedrank.ranking import weighted_score

    X = feature_matrix(data.train)
    probs = head_probabilities(boosters, X, data.recalibration_rates(), calibration)
    return distill_light_ranker(X, weighted_score(probs, settings.ranking.weights))


# --------------------------------------------------------------------------- entry point


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
            "training_data": data.run_dir / MANIFEST,
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
                "seconds": round(r.seconds, 3),
                "search": r.tried,
            }
            for h, r in heads.items()
        },
        "mlflow_run_id": run_id,
    }
    metrics = {
        h: {"validation_logloss_downsampled": r.validation_logloss, **aucs[h]}
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
