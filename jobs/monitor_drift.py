"""Monitoring: drift of the served feature vectors against the training data.

**Drift** (:func:`drift_report`) — PSI per feature (:func:`jobs.validate.psi`, the
validation gate's definition) between the training split the model learnt from and the
served feature vectors. Training examples are negative-downsampled; :func:`training_sample`
undoes that with the job's own deterministic keep-hash so both sides are uniform samples
of impressions.

Part of the monitoring run (:mod:`jobs.monitor`); the threshold comes from ``settings.monitoring``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from feedrank.feature_spec import TRAINING_MANIFEST, model_features
from jobs.monitor_skew import served_with_features
from jobs.training_data import keep_hash
from jobs.validate import PSI_BINS, PSI_MIN_ROWS, psi

# Features that move with the calendar by construction (every served day is "new" next to
# the training days): their PSI is reported but never a breach.
DRIFT_EXEMPT: tuple[str, ...] = (
    "tweet_created_ts",
    "ctx_is_weekend",
    "ctx_days_to_holiday",
)
DRIFT_MAX_ROWS = 100_000  # per side; PSI on 10 bins is stable long before this


def served_matrix(impressions: DataFrame, max_rows: int = DRIFT_MAX_ROWS) -> pd.DataFrame:
    """Served feature vectors as a pandas frame (one column per model feature, NaN = missing).

    More than ``max_rows`` impressions are thinned with the training job's keep-hash (a
    deterministic uniform sample).
    """
    served = served_with_features(impressions)
    n = served.count()
    if n > max_rows:
        served = served.where(keep_hash(F.col("request_id"), F.col("tweet_id")) < max_rows / n)
    names = model_features()
    frame = served.select(
        *[F.get(F.col("features"), i).alias(name) for i, name in enumerate(names)]
    ).toPandas()
    return frame.astype(np.float64)


def training_sample(
    spark: SparkSession, run_dir: Path, max_rows: int = DRIFT_MAX_ROWS
) -> pd.DataFrame:
    """A uniform sample of the impressions behind a training run's ``train`` split.

    The job kept an all-negative row when ``keep_hash < w`` and every positive row; keeping
    only rows with ``keep_hash < w`` (positives included) leaves a uniform ``w``-sample of all
    impressions, so its feature distribution is the impressions', not the downsampled one.
    """
    manifest_path = run_dir / TRAINING_MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no training run at {run_dir} ({TRAINING_MANIFEST} missing)")
    manifest = json.loads(manifest_path.read_text())
    rate = float(manifest["negative_keep_rate"])
    rows = int(manifest["rows"]["train"])
    names = model_features()
    train = spark.read.parquet(str(run_dir / "train"))
    # Expected rows after the uniform filter ~ rows · w / (share kept) ≤ rows; thin further.
    fraction = min(1.0, max_rows / rows) if rows else 1.0
    sample = train.where(keep_hash(F.col("request_id"), F.col("tweet_id")) < rate * fraction)
    return sample.select(*[F.col(n).cast("double") for n in names]).toPandas().astype(np.float64)


def drift_report(
    training: pd.DataFrame,
    served: pd.DataFrame,
    psi_alert: float,
    min_rows: int = PSI_MIN_ROWS,
    bins: int = PSI_BINS,
    exempt: tuple[str, ...] = DRIFT_EXEMPT,
) -> dict[str, Any]:
    """PSI per model feature of served vectors against the training data.

    Args:
        training: training feature values (one column per model feature).
        served: served feature values, same columns.
        psi_alert: PSI above this is a breach (features in ``exempt`` never are).
        min_rows: features with fewer non-missing values on either side are skipped.
        bins: quantile bins of the training distribution.
        exempt: calendar-bound features, reported only.

    Returns:
        ``psi`` per feature (None when skipped), ``null_share`` per side, ``skipped``
        reasons, ``breaches`` (worst first) and ``status``.
    """
    report: dict[str, Any] = {
        "threshold": psi_alert,
        "rows": {"training": len(training), "served": len(served)},
        "exempt": list(exempt),
        "psi": {},
        "null_share": {"training": {}, "served": {}},
        "skipped": {},
        "breaches": [],
    }
    if len(served) == 0 or len(training) == 0:
        side = "served" if len(served) == 0 else "training"
        report["status"] = f"skipped: no {side} rows"
        return report
    for name in model_features():
        train_values = training[name].to_numpy(np.float64)
        served_values = served[name].to_numpy(np.float64)
        report["null_share"]["training"][name] = float(np.isnan(train_values).mean())
        report["null_share"]["served"][name] = float(np.isnan(served_values).mean())
        train_values = train_values[~np.isnan(train_values)]
        served_values = served_values[~np.isnan(served_values)]
        if min(len(train_values), len(served_values)) < min_rows:
            report["psi"][name] = None
            report["skipped"][name] = (
                f"{len(train_values)} training / {len(served_values)} served values < {min_rows}"
            )
            continue
        value = psi(served_values, train_values, bins)
        report["psi"][name] = value
        if value > psi_alert and name not in exempt:
            report["breaches"].append(name)
    report["breaches"].sort(key=lambda n: (-report["psi"][n], n))
    report["status"] = "breach" if report["breaches"] else "ok"
    return report
