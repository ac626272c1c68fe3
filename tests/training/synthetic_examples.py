"""Training-example runs generated from the feature contract, with a known signal.

Writes exactly the layout of ``feedrank training-data`` (see ``feedrank.feature_spec``):
``<training>/<run_id>/{train,validation}/part-00000.parquet`` with
``training_columns()`` and ``manifest.json``, plus the lake ``oracle`` table (true per-head
probabilities keyed by ``(request_id, tweet_id)``) for the same impressions. Every feature
column comes from ``model_features()``, so the generator cannot drift from the contract.

The signal is known: each head's logit is a fixed function of a few features (past
engagement with the author raises like/reply/click, tweet age lowers everything, negative
feedback follows the user's history of it), so tests can check direction and calibration.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feedrank import feature_spec
from feedrank.config import HEADS
from feedrank.schemas import table_schema

CANDIDATES_PER_REQUEST = 20
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def true_logits(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """The generator's ground truth: each head's logit from a handful of features."""
    ua_like = np.log1p(df["ua_like_count_28d"].to_numpy(float))
    ua_click = np.log1p(df["ua_click_count_28d"].to_numpy(float))
    age = df["ctx_tweet_age_hours"].to_numpy(float)
    follows = df["ua_follows"].to_numpy(float)
    media = df["tweet_has_media"].to_numpy(float)
    link = df["tweet_has_link"].to_numpy(float)
    author_like = np.nan_to_num(df["author_like_rate_7d"].to_numpy(float), nan=0.1)
    topic = np.nan_to_num(df["ut_engagement_rate_28d"].to_numpy(float), nan=0.1)
    neg_hist = np.nan_to_num(df["user_negative_rate_7d"].to_numpy(float), nan=0.01)
    fresh = -0.08 * age
    return {
        "like": -3.0
        + 1.2 * ua_like
        + 0.8 * follows
        + 8.0 * author_like
        + 5.0 * topic
        + fresh
        + 0.5 * media,
        "reply": -4.6 + 1.0 * ua_like + 1.0 * follows + 5.0 * topic + fresh,
        "retweet": -4.4 + 0.8 * ua_like + 1.2 * media + 8.0 * author_like + fresh,
        "click": -3.6 + 1.0 * ua_click + 1.6 * link + 4.0 * topic + 0.5 * fresh,
        "negative": -4.6 + 40.0 * neg_hist - 1.2 * follows - 0.4 * ua_like,
    }


def _features(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Plausible values for every contract feature (noise where the signal does not look)."""
    cols: dict[str, np.ndarray] = {}
    for name in feature_spec.model_features():
        if feature_spec.feature_dtype(name) == "int64":
            cols[name] = rng.poisson(3.0, n).astype(np.float64)
        else:
            cols[name] = rng.random(n)
    cols["ua_follows"] = (rng.random(n) < 0.4).astype(np.float64)
    cols["ua_like_count_28d"] = rng.poisson(rng.choice([0.2, 2.0, 6.0], n)).astype(np.float64)
    cols["ua_click_count_28d"] = rng.poisson(rng.choice([0.2, 2.0, 5.0], n)).astype(np.float64)
    cols["tweet_has_media"] = (rng.random(n) < 0.3).astype(np.float64)
    cols["tweet_has_link"] = (rng.random(n) < 0.2).astype(np.float64)
    cols["ctx_tweet_age_hours"] = rng.exponential(12.0, n)
    cols["author_like_rate_7d"] = rng.beta(2, 18, n)
    cols["ut_engagement_rate_28d"] = rng.beta(2, 14, n)
    cols["user_negative_rate_7d"] = rng.beta(1, 60, n)
    # Missing values the way Feast delivers them: NaN for unknown entities.
    for name in ("author_like_rate_7d", "ut_engagement_rate_28d", "ua_days_since_last_engagement"):
        cols[name][rng.random(n) < 0.05] = np.nan
    return pd.DataFrame(cols)[feature_spec.model_features()]


def _impressions(
    n_requests: int, day: dt.datetime, rng: np.random.Generator, request_offset: int
) -> pd.DataFrame:
    n = n_requests * CANDIDATES_PER_REQUEST
    df = _features(n, rng)
    req = np.repeat(np.arange(n_requests), CANDIDATES_PER_REQUEST)
    served = day + pd.to_timedelta(rng.uniform(0, 86_000, n_requests)[req], unit="s")
    df.insert(0, "request_id", [f"s{request_offset + r:07d}" for r in req])
    df.insert(1, "user_id", (1000 + req % 400).astype(np.int64))
    df.insert(2, "tweet_id", np.arange(n, dtype=np.int64) + request_offset * CANDIDATES_PER_REQUEST)
    df.insert(3, "author_id", rng.integers(1, 40, n).astype(np.int64))
    df.insert(4, "served_at", pd.DatetimeIndex(served).as_unit("us"))
    df.insert(5, "position", np.tile(np.arange(CANDIDATES_PER_REQUEST), n_requests))
    probs = {h: 1.0 / (1.0 + np.exp(-z)) for h, z in true_logits(df).items()}
    for head in HEADS:
        df[f"label_{head}"] = (rng.random(n) < probs[head]).astype(np.int64)
        df[f"p_{head}"] = probs[head]
    return df


def _downsample(df: pd.DataFrame, keep_rate: float, rng: np.random.Generator) -> pd.DataFrame:
    any_pos = df[list(feature_spec.LABEL_COLUMNS)].to_numpy().any(axis=1)
    keep_prob = np.where(any_pos, 1.0, keep_rate)
    df = df.assign(**{feature_spec.KEEP_PROB_COLUMN: keep_prob})
    return df[rng.random(len(df)) < keep_prob].reset_index(drop=True)


def _effective_keep_rates(kept: pd.DataFrame) -> dict[str, float]:
    """Per-head negative keep rate: kept negatives / estimated negatives before sampling."""
    w = 1.0 / kept[feature_spec.KEEP_PROB_COLUMN].to_numpy()
    rates = {}
    for head in HEADS:
        neg = kept[f"label_{head}"].to_numpy() == 0
        rates[head] = float(neg.sum() / w[neg].sum())
    return rates


def write_training_run(
    training_root: Path,
    lake_root: Path,
    run_id: str = "synthetic",
    requests_per_day: int = 400,
    train_days: int = 2,
    keep_rate: float = 0.25,
    seed: int = 0,
    shuffle_train_labels: bool = False,
) -> Path:
    """Write a run of training examples and its oracle partitions; return the run directory.

    Args:
        training_root: ``paths.training``.
        lake_root: ``paths.lake`` (the ``oracle`` table is written there).
        run_id: Name of the run directory.
        requests_per_day: Feed requests per day, 20 candidates each.
        train_days: Days before the single validation day.
        keep_rate: Keep-rate of all-negative impressions.
        seed: RNG seed (same seed, same bytes).
        shuffle_train_labels: Permute the train split's labels (a model without signal).
    """
    rng = np.random.default_rng(seed)
    days = [START + dt.timedelta(days=i) for i in range(train_days + 1)]
    frames = [
        _impressions(requests_per_day, d, rng, i * requests_per_day) for i, d in enumerate(days)
    ]
    run_dir = Path(training_root) / run_id
    manifest_rows, positives = {}, {}
    keep_rates: dict[str, float] = {}
    for split, parts in (("train", frames[:-1]), ("validation", frames[-1:])):
        full = pd.concat(parts, ignore_index=True)
        _write_oracle(lake_root, full)
        kept = _downsample(full, keep_rate, rng)
        if split == "train":
            keep_rates = _effective_keep_rates(kept)
            if shuffle_train_labels:
                perm = rng.permutation(len(kept))
                for col in feature_spec.LABEL_COLUMNS:
                    kept[col] = kept[col].to_numpy()[perm]
        out = run_dir / split
        out.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(kept[feature_spec.training_columns()], preserve_index=False)
        pq.write_table(table, out / "part-00000.parquet")
        manifest_rows[split] = len(kept)
        positives[split] = {h: int(kept[f"label_{h}"].sum()) for h in HEADS}
    manifest = {
        "rows": manifest_rows,
        "positives": positives,
        "keep_rates": keep_rates,
        "negative_keep_rate": keep_rate,
        "attribution_window_s": 3600,
        "train_dates": [d.date().isoformat() for d in days[:-1]],
        "validation_dates": [days[-1].date().isoformat()],
        "input_partitions": [],
        "features": feature_spec.model_features(),
        "feature_service": feature_spec.FEATURE_SERVICE,
        "schema_sha256": feature_spec.Contract().sha256,
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return run_dir


def _write_oracle(lake_root: Path, df: pd.DataFrame) -> None:
    schema = table_schema("oracle")
    oracle = pd.DataFrame(
        {
            "schema_version": 1,
            "request_id": df["request_id"],
            "user_id": df["user_id"],
            "tweet_id": df["tweet_id"],
            "served_at": df["served_at"],
            **{f"p_{h}": df[f"p_{h}"] for h in HEADS},
        }
    )
    for day, part in oracle.groupby(oracle["served_at"].dt.date):
        folder = Path(lake_root) / "oracle" / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(part, preserve_index=False).select(schema.names).cast(schema)
        pq.write_table(table, folder / "part-00000.parquet")
