"""The trainer's inputs: a verified ``feedrank training-data`` run, its weights and matrices.

Input is a run of ``feedrank training-data`` (``<paths.training>/<run_id>/{train,validation}``
+ ``manifest.json``, layout in :mod:`feedrank.feature_spec`); :func:`load_training_data`
refuses a run whose columns or manifest disagree with the contract. ``feedrank evaluate``
reads its held-out rows through the same functions.

* Features are exactly ``feature_spec.model_features()``, in that order.
* The ``feature_spec.NOT_LEARNED`` columns (an absolute time) are masked to missing before
  fitting (:func:`learning_matrix`), so the heads cannot split on them.
* Recalibration for negative downsampling. The training-data job keeps every impression with
  *any* positive and a share ``r`` (``negative_keep_rate``) of the all-negative ones, so a
  row negative for head h survives with probability 1 when another head is positive and ``r``
  otherwise — a rate that varies with the features (rows likely to be liked are likely to be
  retweeted too). One constant ``w`` per head (the manifest's effective ``keep_rates``) then
  cannot undo it: measured on held-out data, retweet came out at 0.81× the true rate. So each
  head's negatives are weighted ``r / keep_prob`` (positives 1, :func:`negative_weights`): the
  head then sees its negatives sampled uniformly at ``r``, and ``q = p / (p + (1 − p)/r)``
  (applied by the model) is exact. The manifest's per-head rates are kept in the metadata for
  provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feedrank import feature_spec
from feedrank.config import HEADS, Settings
from feedrank.errors import FeedrankError
from feedrank.feature_spec import TRAINING_MANIFEST

log = logging.getLogger("feedrank.train")

SPLITS = ("train", "validation")


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


def _validation_end(run_dir: Path) -> str:
    try:
        manifest = json.loads((run_dir / TRAINING_MANIFEST).read_text())
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
        runs = [p for p in root.glob("*") if (p / TRAINING_MANIFEST).is_file()]
        if not runs:
            raise FeedrankError(f"no training-data run under {root}; run 'feedrank training-data'")
        return max(runs, key=lambda p: (_validation_end(p), p.stat().st_mtime))
    path = Path(data)
    if not path.is_absolute() and not path.exists():
        path = root / str(data)
    if not (path / TRAINING_MANIFEST).is_file():
        raise FeedrankError(f"{path} is not a training-data run (no {TRAINING_MANIFEST})")
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


def selection_rows(train: pd.DataFrame) -> tuple[str, np.ndarray]:
    """The training rows that choose the heads' tree counts and hyperparameters.

    The last training day (never the held-out day, which the gate scores): selecting on the
    day the model is then judged on would make the gate's figures optimistic. With a single
    training day, its last fifth by ``served_at``.

    Returns:
        A label for the rows (their day, or ``"<day> last 20%"``) and a boolean row mask.
    """
    served = pd.to_datetime(train["served_at"], utc=True)
    days = served.dt.strftime("%Y-%m-%d").to_numpy()
    last = str(days.max())
    mask = days == last
    if mask.all():
        cut = served.quantile(0.8)
        return f"{last} last 20%", (served > cut).to_numpy()
    return last, mask


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
    manifest_path = run_dir / TRAINING_MANIFEST
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
