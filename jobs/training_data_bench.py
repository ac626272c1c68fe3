"""``feedrank bench training-data``: the same point-in-time joins in Spark, Feast and DuckDB.

Synthetic impressions (``rows``) are joined as of ``served_at`` to two feature tables written
in the feature-table contract: ``user_engagement_daily`` (daily snapshots, ttl 2 days) and
``tweet_realtime`` (5-minute counters, ttl 1 day). Three engines do the same joins:

- Spark: :func:`jobs.training_data.asof_lookup` per view, joined back by row id (what
  ``feedrank training-data`` runs), written to the ``noop`` sink so all columns are computed;
- Feast: ``get_historical_features`` on the file offline store of ``feature_repo/``, applied
  in a scratch run folder (capped at ``feast_max_rows`` entity rows; above that the time is
  extrapolated linearly from the capped run and reported as such);
- DuckDB: ``ASOF LEFT JOIN`` per view with the TTL applied, materialized into a temp table.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feedrank import lake, publish
from feedrank.config import Settings
from feedrank.feature_spec import VIEWS
from jobs import spark_io

log = logging.getLogger("feedrank.bench")

BENCH_VIEWS = ("user_engagement_daily", "tweet_realtime")
DAY0 = dt.date(2026, 11, 1)
STEP_S = 300


def _features_table(
    view_name: str, keys: np.ndarray, times_us: np.ndarray, rng: np.random.Generator
) -> pa.Table:
    schema = lake.feature_table_schema(view_name)
    ts = pa.array(times_us, pa.timestamp("us", tz="UTC"))
    columns = {
        schema.names[0]: pa.array(keys, pa.int64()),
        "event_timestamp": ts,
        "created_timestamp": ts,
    }
    for feat in VIEWS[view_name].features:
        if feat.dtype == "int64":
            columns[feat.name] = pa.array(rng.integers(0, 50, len(keys)), pa.int64())
        else:
            columns[feat.name] = pa.array(rng.random(len(keys)), pa.float64())
    return pa.table(columns, schema=schema)


def write_bench_data(home: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """Impressions over two days plus the two feature tables, as Parquet under ``home``."""
    rng = np.random.default_rng(seed)
    users, tweets = max(1_000, rows // 100), max(1_000, rows // 20)
    day_us = 86_400 * 1_000_000
    t0 = int(lake.midnight(DAY0).timestamp()) * 1_000_000
    features_root = home / "features"
    counts = {}
    # Daily snapshots of days 0..2 (event_timestamp = next midnight).
    for d in range(3):
        folder = lake.partition_dir(
            features_root, "user_engagement_daily", DAY0 + dt.timedelta(days=d)
        )
        folder.mkdir(parents=True, exist_ok=True)
        keys = np.arange(users, dtype=np.int64)
        table = _features_table(
            "user_engagement_daily", keys, np.full(users, t0 + (d + 1) * day_us), rng
        )
        pq.write_table(table, folder / "part-00000.parquet")
        counts["user_engagement_daily"] = counts.get("user_engagement_daily", 0) + users
    # Stream counters: about one row per two impressions, on the 5-minute grid.
    n_stream = max(1_000, rows // 2)
    steps = rng.integers(0, 3 * 86_400 // STEP_S, n_stream) * STEP_S * 1_000_000 + t0
    stream = _features_table("tweet_realtime", rng.integers(0, tweets, n_stream), steps, rng)
    folder = lake.partition_dir(features_root, "tweet_realtime", DAY0)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(stream, folder / "part-00000.parquet")
    counts["tweet_realtime"] = n_stream
    served = t0 + day_us + rng.integers(0, 2 * day_us, rows)
    impressions = pa.table(
        {
            "row_id": pa.array(np.arange(rows, dtype=np.int64)),
            "user_id": pa.array(rng.integers(0, users, rows), pa.int64()),
            "tweet_id": pa.array(rng.integers(0, tweets, rows), pa.int64()),
            "served_at": pa.array(served, pa.timestamp("us", tz="UTC")),
        }
    )
    (home / "impressions").mkdir(parents=True, exist_ok=True)
    pq.write_table(impressions, home / "impressions" / "part-00000.parquet")
    counts["impressions"] = rows
    return counts


def time_spark(spark, home: Path) -> float:
    """Seconds for Spark's as-of joins of every impression to both views."""
    from jobs.training_data import asof_lookup

    start = time.perf_counter()
    imps = spark.read.parquet(str(home / "impressions"))
    out = imps
    for name in BENCH_VIEWS:
        feats = spark_io.read_view(spark, home / "features", name, None, None)
        out = out.join(
            asof_lookup(imps, feats, VIEWS[name], id_columns=("row_id",)), "row_id", "left"
        )
    out.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - start


def time_duckdb(home: Path) -> float:
    """Seconds for DuckDB's ASOF LEFT JOINs (TTL applied) into a temp table."""
    import duckdb

    start = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    selects, joins = [], []
    for alias, name in zip(("u", "t"), BENCH_VIEWS, strict=True):
        view = VIEWS[name]
        key = lake.feature_table_schema(name).names[0]
        path = str(home / "features" / name / "*" / "*.parquet")
        joins.append(
            f"ASOF LEFT JOIN read_parquet('{path}') {alias} "
            f"ON i.{key} = {alias}.{key} AND i.served_at >= {alias}.event_timestamp"
        )
        fresh = f"{alias}.event_timestamp >= i.served_at - INTERVAL {view.ttl_days} DAY"
        selects += [f"CASE WHEN {fresh} THEN {alias}.{f} END AS {f}" for f in view.feature_names]
    sql = (
        f"CREATE TEMP TABLE joined AS SELECT i.*, {', '.join(selects)} "
        f"FROM read_parquet('{home / 'impressions' / '*.parquet'}') i {' '.join(joins)}"
    )
    con.execute(sql)
    con.execute("SELECT count(*) FROM joined").fetchone()
    con.close()
    return time.perf_counter() - start


def time_feast(settings: Settings, home: Path, max_rows: int) -> tuple[float, int]:
    """Seconds for Feast's file offline store on up to ``max_rows`` entity rows."""
    from feedrank import featurestore

    cfg = settings.model_copy(update={"paths": settings.paths.model_copy(update={"home": home})})
    featurestore.apply_repo(cfg)
    store = featurestore.feature_store(cfg)
    imps = pq.read_table(home / "impressions").slice(0, max_rows).to_pandas()
    entity_df = imps.rename(columns={"served_at": "event_timestamp"})[
        ["user_id", "tweet_id", "event_timestamp"]
    ]
    refs = [f"{name}:{f}" for name in BENCH_VIEWS for f in VIEWS[name].feature_names]
    start = time.perf_counter()
    store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    return time.perf_counter() - start, len(entity_df)


def bench_training_data(
    settings: Settings, rows: int, json_path: Path | None = None, feast_max_rows: int = 1_000_000
) -> dict:
    """Run the three engines on ``rows`` impressions; return (and optionally write) timings."""
    from feedrank.spark import get_spark

    home = settings.paths.home / "bench" / f"training-data-{rows}"
    shutil.rmtree(home, ignore_errors=True)
    t = time.perf_counter()
    counts = write_bench_data(home, rows)
    log.info("bench data %s written in %.1fs", counts, time.perf_counter() - t)
    t = time.perf_counter()
    spark = get_spark("feedrank-bench", settings)
    spark_start_s = time.perf_counter() - t
    time_spark(spark, home)  # warm-up: JIT, Python workers, file listing caches
    spark_s = time_spark(spark, home)
    duckdb_s = time_duckdb(home)
    feast_measured_s, feast_rows = time_feast(settings, home, min(rows, feast_max_rows))
    feast_s = feast_measured_s * rows / feast_rows
    result = {
        "rows": rows,
        "feature_rows": {k: v for k, v in counts.items() if k != "impressions"},
        "spark_s": round(spark_s, 3),
        "spark_rows_per_s": round(rows / spark_s),
        "spark_session_start_s": round(spark_start_s, 3),
        "duckdb_s": round(duckdb_s, 3),
        "feast_s": round(feast_s, 3),
        "feast_rows_measured": feast_rows,
        "feast_extrapolated": feast_rows < rows,
        "spark_vs_feast_speedup": round(feast_s / spark_s, 2),
        "spark_vs_duckdb_ratio": round(spark_s / duckdb_s, 2),
        "cores": spark.sparkContext.defaultParallelism,
    }
    if json_path:
        publish.write_json(Path(json_path), result)
    shutil.rmtree(home, ignore_errors=True)
    return result


if __name__ == "__main__":  # pragma: no cover - manual runs
    from feedrank.config import get_settings

    print(json.dumps(bench_training_data(get_settings(), 20_000), indent=2))
