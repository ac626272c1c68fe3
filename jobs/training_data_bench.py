"""``feedrank bench training-data``: the same point-in-time joins in Spark, Feast and DuckDB.

Long because: the data generator, the three engines, the measuring and the curve's plot share
one data layout and one result shape.

Synthetic impressions (``rows``) are joined as of ``served_at`` to two feature tables written
in the feature-table contract: ``user_engagement_daily`` (daily snapshots, ttl 2 days) and
``tweet_realtime`` (5-minute counters, ttl 1 day). Three engines do the same joins:

- Spark: :func:`jobs.training_data.asof_join` per view (broadcast at or below
  ``training_data.asof_broadcast_max_rows`` rows, else a sort-merge join carrying the narrow
  impressions; shuffle partitions sized from the inputs' rows as ``feedrank training-data``
  sizes them), written to the ``noop`` sink so all columns are computed;
- Feast: ``get_historical_features`` on the file offline store of ``feature_repo/``, applied
  in a scratch run folder (capped at ``feast_max_rows`` entity rows; above that the time is
  extrapolated linearly from the capped run and reported as such);
- DuckDB: ``ASOF LEFT JOIN`` per view with the TTL applied, the result streamed out in Arrow
  batches and dropped (as Spark's ``noop`` sink drops its rows).

Several sizes make a scaling curve (JSON + PNG). Per engine and size: wall seconds, CPU
seconds of the process doing the work (the driver JVM for Spark, this process for DuckDB and
Feast), rows per core-second (rows / (seconds x cores the engine may use)) and that process's
peak RSS during the run (Linux VmHWM, reset before each engine). Each size's data is written to
``<home>/bench/`` and deleted after its run.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feedrank import lake, publish
from feedrank.config import Settings
from feedrank.feature_spec import VIEWS
from feedrank.spark import size_shuffle_partitions
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


CHUNK_ROWS = 5_000_000  # rows per generated Parquet file: bounds the generator's memory
# Rows per Parquet row group, the unit every engine splits a scan into. The lake's tables are
# many small files (land writes one per micro-batch and day); with pyarrow's default group of
# 1Mi rows the 1M-row impressions were one group, so Spark scanned and joined them in one task
# on one core (2.7-3.4 s, against 2.2-2.5 s in groups of 250k; docs/performance.md, #27).
ROW_GROUP_ROWS = 250_000


def _write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)


def write_bench_data(home: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """Impressions over two days plus the two feature tables, as Parquet under ``home``.

    Impressions and stream counters are written in files of at most :data:`CHUNK_ROWS` rows,
    so 100M rows never sit in memory at once.
    """
    rng = np.random.default_rng(seed)
    users, tweets = max(1_000, rows // 100), max(1_000, rows // 20)
    day_us = 86_400 * 1_000_000
    t0 = int(lake.midnight(DAY0).timestamp()) * 1_000_000
    features_root = home / "features"
    counts = {}
    # Daily snapshots of days 0 and 1 (event_timestamp = next midnight), the ones the
    # impressions of days 1 and 2 can use: as ``feedrank training-data`` reads a daily view,
    # up to the day before the window's end (day 2's snapshot is stamped after every
    # impression; it made the user view's hash join test 3 rows per point instead of 2).
    for d in range(2):
        folder = lake.partition_dir(
            features_root, "user_engagement_daily", DAY0 + dt.timedelta(days=d)
        )
        folder.mkdir(parents=True, exist_ok=True)
        keys = np.arange(users, dtype=np.int64)
        table = _features_table(
            "user_engagement_daily", keys, np.full(users, t0 + (d + 1) * day_us), rng
        )
        _write(table, folder / "part-00000.parquet")
        counts["user_engagement_daily"] = counts.get("user_engagement_daily", 0) + users
    # Stream counters: about one row per two impressions, on the 5-minute grid.
    n_stream = max(1_000, rows // 2)
    folder = lake.partition_dir(features_root, "tweet_realtime", DAY0)
    folder.mkdir(parents=True, exist_ok=True)
    for i, first in enumerate(range(0, n_stream, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, n_stream - first)
        steps = rng.integers(0, 3 * 86_400 // STEP_S, n) * STEP_S * 1_000_000 + t0
        stream = _features_table("tweet_realtime", rng.integers(0, tweets, n), steps, rng)
        _write(stream, folder / f"part-{i:05d}.parquet")
    counts["tweet_realtime"] = n_stream
    (home / "impressions").mkdir(parents=True, exist_ok=True)
    for i, first in enumerate(range(0, rows, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, rows - first)
        served = t0 + day_us + rng.integers(0, 2 * day_us, n)
        impressions = pa.table(
            {
                "row_id": pa.array(np.arange(first, first + n, dtype=np.int64)),
                "user_id": pa.array(rng.integers(0, users, n), pa.int64()),
                "tweet_id": pa.array(rng.integers(0, tweets, n), pa.int64()),
                "served_at": pa.array(served, pa.timestamp("us", tz="UTC")),
            }
        )
        _write(impressions, home / "impressions" / f"part-{i:05d}.parquet")
    counts["impressions"] = rows
    return counts


def _jvm_pid(spark) -> int:
    """The driver JVM's process id (in local mode the executors run inside it)."""
    return int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())


def _gc_names(spark) -> list[str]:
    """The driver JVM's garbage collectors, as the JVM names them (e.g. "PS Scavenge")."""
    beans = spark.sparkContext._jvm.java.lang.management.ManagementFactory
    return [str(b.getName()) for b in beans.getGarbageCollectorMXBeans()]


def spark_pids(spark) -> list[int]:
    """The driver JVM and, on a standalone cluster of this machine, the application's executor
    JVMs (started with the application and kept for its life: static allocation)."""
    pids = [_jvm_pid(spark)]
    app = spark.sparkContext.applicationId.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process has exited
            continue
        if any(a.endswith(b"CoarseGrainedExecutorBackend") for a in argv) and app in argv:
            pids.append(int(proc.name))
    return pids


def _reset_peak_rss(pid: int) -> None:
    """Start a new peak-RSS window for ``pid`` (Linux: ``clear_refs`` value 5 resets VmHWM)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) since the last :func:`_reset_peak_rss`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(run: Callable[[], object], pid: int | Sequence[int]) -> dict[str, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of process ``pid`` while ``run()`` runs.

    With several processes: their CPU seconds summed and the sum of their peaks (an upper
    bound of the peak they held together).
    """
    pids = [pid] if isinstance(pid, int) else list(pid)
    for p in pids:
        _reset_peak_rss(p)
    cpu, start = sum(_cpu_s(p) for p in pids), time.perf_counter()
    run()
    return {
        "s": round(time.perf_counter() - start, 3),
        "cpu_s": round(sum(_cpu_s(p) for p in pids) - cpu, 3),
        "peak_rss_mb": round(sum(_peak_rss_mb(p) for p in pids), 1),
    }


def best_of(run: Callable[[], object], pid: int | Sequence[int], repeat: int) -> dict[str, Any]:
    """:func:`measure` of ``run`` ``repeat`` times: the fastest run's figures, plus every
    run's seconds (``runs_s``). Each engine gets the same number of runs, so a first run's
    one-off costs (a JVM's JIT and heap growth at a new size) count alike for all of them."""
    runs = [measure(run, pid) for _ in range(repeat)]
    return {**min(runs, key=lambda r: r["s"]), "runs_s": [r["s"] for r in runs]}


def run_spark(spark, settings: Settings, home: Path) -> None:
    """Spark's as-of joins of every impression to both views into the ``noop`` sink.

    :func:`jobs.training_data.asof_join` per view, as ``feedrank training-data`` runs it:
    shuffle partitions sized from the inputs' rows (:func:`feedrank.spark.size_shuffle_partitions`),
    a view that :func:`~jobs.training_data.broadcastable` admits broadcast (decided once per
    view), the others sort-merge joined first, while the rows are narrow, with the impressions
    carried through the join (they are narrow here).
    """
    from jobs.training_data import asof_join, broadcastable

    features = home / "features"
    inputs = [p for n in BENCH_VIEWS for p in lake.existing_partitions(features, n)]
    size_shuffle_partitions(spark, settings, [home / "impressions", *inputs])
    max_rows = settings.training_data.asof_broadcast_max_rows
    views = {n: spark_io.read_view(spark, features, n, None, None) for n in BENCH_VIEWS}
    broadcast = {n: broadcastable(v, VIEWS[n], max_rows) for n, v in views.items()}
    out = spark.read.parquet(str(home / "impressions"))
    for name in sorted(views, key=broadcast.__getitem__):
        out = asof_join(
            out,
            views[name],
            VIEWS[name],
            id_columns=("row_id",),
            broadcast=broadcast[name],
            carry=True,
        )
    out.write.format("noop").mode("overwrite").save()


def duckdb_threads() -> int:
    """Threads DuckDB uses by default on this machine."""
    import duckdb

    with duckdb.connect() as con:
        return int(con.execute("SELECT current_setting('threads')").fetchone()[0])


# Disk DuckDB's spill leaves free: its own default cap, 90 % of the free space, took a
# 28 GB disk down to 1 GB at 100M rows (docs/performance.md, #27).
SPILL_HEADROOM_BYTES = 4 * 2**30


def run_duckdb(home: Path, memory_limit: str) -> None:
    """DuckDB's ASOF LEFT JOINs (TTL applied), every result row streamed out and dropped,
    spilling to ``home`` above ``memory_limit``; the spill stops, with DuckDB's out-of-space
    error, where :data:`SPILL_HEADROOM_BYTES` of the disk would be left."""
    import duckdb

    spill = home / "duckdb-spill"
    spill.mkdir(parents=True, exist_ok=True)
    cap_mb = max(0, shutil.disk_usage(spill).free - SPILL_HEADROOM_BYTES) // 2**20
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{spill}'")
    con.execute(f"SET max_temp_directory_size = '{cap_mb}MB'")
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
        f"SELECT i.*, {', '.join(selects)} "
        f"FROM read_parquet('{home / 'impressions' / '*.parquet'}') i {' '.join(joins)}"
    )
    # Every row computed and streamed out in Arrow batches, then dropped: the counterpart of
    # Spark's noop sink. A temp table held the whole result (6.7 GB at 10M rows), and at 100M
    # its spill ran out of disk (docs/performance.md, #27).
    for _ in con.sql(sql).to_arrow_reader(1_000_000):
        pass
    con.close()


def prepare_feast(settings: Settings, home: Path, max_rows: int) -> Callable[[], object]:
    """Feast's ``get_historical_features`` on the first ``max_rows`` impressions, ready to run
    (the repo is applied and the entity frame loaded outside the timed part)."""
    import pyarrow.dataset as ds

    from feedrank import featurestore

    cfg = settings.model_copy(update={"paths": settings.paths.model_copy(update={"home": home})})
    featurestore.apply_repo(cfg)
    store = featurestore.feature_store(cfg)
    imps = ds.dataset(home / "impressions").head(max_rows).to_pandas()
    entity_df = imps.rename(columns={"served_at": "event_timestamp"})[
        ["user_id", "tweet_id", "event_timestamp"]
    ]
    refs = [f"{name}:{f}" for name in BENCH_VIEWS for f in VIEWS[name].feature_names]
    return lambda: store.get_historical_features(entity_df=entity_df, features=refs).to_df()


def _ran(figures: dict) -> bool:
    """Whether an engine's figures at a size are a run (a failed size holds its ``error``)."""
    return "error" not in figures


def _per_core(rows: int, figures: dict) -> dict:
    if not _ran(figures):
        return figures
    return {
        **figures,
        "rows_per_core_s": round(rows / (figures["s"] * figures["cores"])),
        "rows_per_cpu_s": round(rows / figures["cpu_s"]) if figures["cpu_s"] > 0 else None,
    }


def _ratio(engines: dict, a: str, b: str) -> float | None:
    """``a``'s rows per core-second over ``b``'s; None when either failed at this size."""
    if not (_ran(engines[a]) and _ran(engines[b])):
        return None
    return round(engines[a]["rows_per_core_s"] / engines[b]["rows_per_core_s"], 3)


def bench_point(
    settings: Settings, spark, rows: int, feast_max_rows: int, warm_up: bool, repeat: int = 1
) -> dict[str, Any]:
    """The three engines on ``rows`` impressions (data written, joined ``repeat`` times each
    (:func:`best_of`), then deleted). DuckDB failing at a size (out of memory and of spill
    disk) is recorded as that engine's ``error`` and the curve goes on."""
    import duckdb

    home = settings.paths.home / "bench" / f"training-data-{rows}"
    shutil.rmtree(home, ignore_errors=True)
    try:
        load_before = os.getloadavg()[0]
        t = time.perf_counter()
        counts = write_bench_data(home, rows)
        log.info("bench data %s written in %.1fs", counts, time.perf_counter() - t)
        duckdb_limit = settings.training_data.bench_duckdb_memory_limit
        if warm_up:  # JIT, file listing caches: the first query of a session is slower
            run_spark(spark, settings, home)
        cores = os.cpu_count() or 1
        pids = spark_pids(spark)
        # Each engine's figures are logged when it finishes: a later engine that fails (a full
        # disk under DuckDB's spill at 100M rows) does not take them with it.
        engines = {
            "spark": {
                **best_of(lambda: run_spark(spark, settings, home), pids, repeat),
                "cores": spark.sparkContext.defaultParallelism,
                "process": "driver JVM (local mode: executors inside it)"
                if len(pids) == 1
                else f"driver JVM + {len(pids) - 1} executor JVMs",
            }
        }
        log.info("training-data bench %s rows, spark: %s", rows, engines["spark"])
        try:
            engines["duckdb"] = {
                **best_of(lambda: run_duckdb(home, duckdb_limit), os.getpid(), repeat),
                "cores": min(duckdb_threads(), cores),
                "process": "this Python process",
            }
        except duckdb.Error as exc:
            engines["duckdb"] = {"error": str(exc).splitlines()[0]}
            shutil.rmtree(home / "duckdb-spill", ignore_errors=True)
        log.info("training-data bench %s rows, duckdb: %s", rows, engines["duckdb"])
        feast_rows = min(rows, feast_max_rows)
        feast = best_of(prepare_feast(settings, home, feast_rows), os.getpid(), repeat)
        scale = rows / feast_rows
        engines["feast"] = {
            "s": round(feast["s"] * scale, 3),
            "cpu_s": round(feast["cpu_s"] * scale, 3),
            "peak_rss_mb": feast["peak_rss_mb"],
            "cores": cores,  # dask's threaded scheduler: one thread per core
            "process": "this Python process",
            "rows_measured": feast_rows,
            "s_measured": feast["s"],
            "runs_s_measured": feast["runs_s"],
            # Above the cap the seconds are a linear extrapolation; the memory is the capped run's.
            "extrapolated": feast_rows < rows,
        }
        engines = {name: _per_core(rows, figures) for name, figures in engines.items()}
        return {
            "rows": rows,
            "feature_rows": {k: v for k, v in counts.items() if k != "impressions"},
            "engines": engines,
            "spark_vs_duckdb_per_core": _ratio(engines, "spark", "duckdb"),
            "spark_vs_feast_per_core": _ratio(engines, "spark", "feast"),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def goals(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 27's goals checked on a curve: Spark within 2x of DuckDB per core from 10M rows,
    ahead of Feast at every size, and no size step where seconds per row rise > 20 %. A size
    where an engine failed is left out of that engine's figures."""
    growth = {}
    for engine in ("spark", "duckdb", "feast"):
        per_row = [
            p["engines"][engine]["s"] / p["rows"] for p in points if _ran(p["engines"][engine])
        ]
        steps = [b / a for a, b in itertools.pairwise(per_row)]
        growth[engine] = round(max(steps), 3) if steps else None
    large = [
        p for p in points if p["rows"] >= 10_000_000 and p["spark_vs_duckdb_per_core"] is not None
    ]
    return {
        "spark_within_2x_of_duckdb_from_10m": (
            all(p["spark_vs_duckdb_per_core"] >= 0.5 for p in large) if large else None
        ),
        "spark_ahead_of_feast_everywhere": all(
            (p["spark_vs_feast_per_core"] or 0) > 1 for p in points
        ),
        "max_step_growth_of_s_per_row": growth,
        "spark_linear_within_20pct": growth["spark"] is None or growth["spark"] <= 1.2,
    }


def plot_curve(figures: dict[str, Any], path: Path) -> None:
    """The scaling curve as a PNG: seconds, rows per core-second and peak memory per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (secs, rate, mem) = plt.subplots(1, 3, figsize=(15, 4.5))
    for engine, style in (("spark", "o-"), ("duckdb", "s-"), ("feast", "^-")):
        done = [p for p in figures["points"] if _ran(p["engines"][engine])]
        rows = [p["rows"] for p in done]
        stats = [p["engines"][engine] for p in done]
        line = secs.plot(rows, [s["s"] for s in stats], style, label=engine)[0]
        rate.plot(rows, [s["rows_per_core_s"] for s in stats], style, label=engine)
        mem.plot(rows, [s["peak_rss_mb"] for s in stats], style, label=engine)
        guessed = [(r, s) for r, s in zip(rows, stats, strict=True) if s.get("extrapolated")]
        if guessed:  # extrapolated Feast points: hollow markers
            for ax, key in ((secs, "s"), (rate, "rows_per_core_s")):
                ax.plot(
                    [r for r, _ in guessed],
                    [s[key] for _, s in guessed],
                    style[0],
                    mfc="white",
                    color=line.get_color(),
                    label=f"{engine} (extrapolated)" if ax is secs else None,
                )
    secs.set(xscale="log", yscale="log", xlabel="impression rows", ylabel="seconds")
    secs.set_title("as-of join of 2 views")
    rate.set(xscale="log", yscale="log", xlabel="impression rows", ylabel="rows per core-second")
    rate.set_title("throughput per core")
    mem.set(xscale="log", xlabel="impression rows", ylabel="peak RSS, MB")
    mem.set_title("peak memory (Feast: at its measured size)")
    for ax in (secs, rate, mem):
        ax.legend(fontsize=8)
    fig.suptitle(
        f"feedrank bench training-data: {figures['spark_master']}, {figures['cpu_count']} cores, "
        f"load average {figures['load_avg_1m'][0]:g} → {figures['load_avg_1m'][1]:g}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bench_training_data(
    settings: Settings,
    sizes: Sequence[int],
    json_path: Path | None = None,
    png_path: Path | None = None,
    feast_max_rows: int = 1_000_000,
    repeat: int = 1,
) -> dict[str, Any]:
    """Run the three engines ``repeat`` times at each size in ``sizes`` (figures of each
    engine's fastest run); return (and write) the curve."""
    from feedrank.spark import get_spark

    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    spark = get_spark("feedrank-bench", settings)
    spark_start_s = time.perf_counter() - t
    points = []
    for i, rows in enumerate(sorted(set(sizes))):
        points.append(bench_point(settings, spark, rows, feast_max_rows, i == 0, repeat))
        log.info("training-data bench %s rows: %s", rows, points[-1]["engines"])
    conf = spark.sparkContext.getConf()
    result = {
        "points": points,
        "goals": goals(points),
        "cpu_count": os.cpu_count(),
        "spark_master": spark.sparkContext.master,
        "spark_session_start_s": round(spark_start_s, 3),
        "spark_conf": {
            k: conf.get(k)
            for k in (
                "spark.driver.memory",
                "spark.shuffle.compress",
                "spark.sql.shuffle.partitions",
            )
            if conf.contains(k)
        },
        "spark_driver_gc": _gc_names(spark),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "feast_max_rows": feast_max_rows,
        "repeat": repeat,
        "asof_broadcast_max_rows": settings.training_data.asof_broadcast_max_rows,
        "duckdb_memory_limit": settings.training_data.bench_duckdb_memory_limit,
    }
    if json_path:
        publish.write_json(Path(json_path), result)
    if png_path:
        plot_curve(result, Path(png_path))
    return result


if __name__ == "__main__":  # pragma: no cover - manual runs
    from feedrank.config import get_settings

    print(json.dumps(bench_training_data(get_settings(), [20_000]), indent=2))
