"""Training examples: labelled impressions with every feature joined as of the impression.

Long because: labels, point-in-time joins, downsampling and the split are one job whose steps
share columns.

Pure steps (DataFrames in, DataFrame out), composed by :func:`build_training_examples`:

1. :func:`attribute_labels` — ``label_<head>`` = 1 when the same user engaged with the same
   tweet of the same request with that head within ``attribution_window_s`` after
   ``served_at`` (inclusive on both ends).
2. :func:`downsample_negatives` — rows with no positive label are kept when a deterministic
   hash of ``request_id|tweet_id`` falls below the keep-rate (reruns keep the same rows);
   ``keep_prob`` records the survival probability.
3. :func:`asof_join` per view — Feast's point-in-time semantics at the request's moment
   (:func:`request_time`: ``requested_at``, else ``served_at``; serving reads the online store
   when the request arrives): the row with the greatest ``event_timestamp`` <= that moment
   (ties: greatest ``created_timestamp``) and ``event_timestamp`` >= moment - ttl; otherwise
   null. Done as an equi-join on the key with a range condition against each feature row's
   validity interval (:func:`feature_intervals`), so every point matches at most one row.
4. :func:`add_context` — :func:`feedrank.context.context_features` through a pandas UDF.

:func:`run_training_data` is the shell: reads an explicit interval, writes
``<paths.training>/<run_id>/{train,validation,audit}/`` and ``manifest.json`` atomically.
The audit folder keeps each row's per-view source ``event_timestamp`` for the leak check
(:mod:`tests/leak_checks.py <leak_checks>`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from feedrank import lake, publish
from feedrank.config import HEADS, Settings
from feedrank.context import context_features
from feedrank.errors import FeedrankError
from feedrank.feature_spec import (
    CONTEXT_FEATURES,
    ENTITIES,
    FEATURE_SERVICE,
    ID_COLUMNS,
    KEEP_PROB_COLUMN,
    LABEL_COLUMNS,
    TRAINING_MANIFEST,
    VIEWS,
    View,
    model_features,
    training_columns,
)
from feedrank.schemas import DEVICES
from feedrank.spark import parquet_rows, size_shuffle_partitions
from jobs import spark_io

log = logging.getLogger("feedrank.training_data")

SPLITS = ("train", "validation")
ID_KEYS: tuple[str, ...] = ("request_id", "tweet_id")  # one impression
AUDIT_DIR = "audit"
# The user_topic view is keyed by the candidate's topic, which comes from tweet_attributes.
VIEW_KEY_COLUMNS: dict[str, dict[str, str]] = {
    "user_topic_affinity_daily": {"topic": "tweet_topic"},
}
# tweet_attributes first: it provides tweet_topic (and tweet_created_ts for the context).
# Only views that feed the model are joined (tweet_authors is a serving lookup).
MODEL_VIEWS: tuple[str, ...] = tuple(name for name, v in VIEWS.items() if v.in_model)
JOIN_ORDER: tuple[str, ...] = (
    "tweet_attributes",
    *[v for v in MODEL_VIEWS if v != "tweet_attributes"],
)
_HASH_DIGITS = 15  # 60 bits of SHA-256: exact in a double after scaling by 2**-60.


def source_ts_column(view_name: str) -> str:
    """Audit column holding the ``event_timestamp`` of the feature row a training row used."""
    return f"_src_ts_{view_name}"


def attribute_labels(
    impressions: DataFrame, engagements: DataFrame, attribution_window_s: int
) -> DataFrame:
    """Impressions plus one ``label_<head>`` (0/1 bigint) per head.

    Args:
        impressions: lake impressions.
        engagements: lake engagements (one row per engagement, ``head`` column).
        attribution_window_s: an engagement counts when
            ``served_at <= engaged_at <= served_at + attribution_window_s``.
    """
    keys = ["request_id", "user_id", "tweet_id"]
    window = F.expr(f"INTERVAL {int(attribution_window_s)} SECONDS")
    # Each key's engagements as one array, so the impressions are shuffled once, by the join
    # (the grouped side is already partitioned by the keys), and each impression is labelled
    # from its own served_at. A dedup of the impressions' keys and a second join used to
    # shuffle the 18.6M impressions of the 20,000-user world twice (docs/performance.md #27).
    engaged = engagements.groupBy(*keys).agg(
        F.collect_list(F.struct("head", "engaged_at")).alias("_engaged")
    )
    served = F.col("served_at")

    def label(head: str) -> Column:
        hit = F.exists(
            "_engaged",
            lambda e: (
                (e["head"] == head)
                & (e["engaged_at"] >= served)
                & (e["engaged_at"] <= served + window)
            ),
        )
        return F.coalesce(hit.cast("bigint"), F.lit(0).cast("bigint")).alias(f"label_{head}")

    rest = [c for c in impressions.columns if c not in keys]
    return impressions.join(engaged, keys, "left").select(*keys, *rest, *[label(h) for h in HEADS])


def keep_hash(request_id: Column, tweet_id: Column) -> Column:
    """Uniform [0, 1) from SHA-256 of ``request_id|tweet_id`` (see :func:`keep_hash_py`)."""
    digest = F.sha2(F.concat_ws("|", request_id, tweet_id.cast("string")), 256)
    value = F.conv(F.substring(digest, 1, _HASH_DIGITS), 16, 10).cast("double")
    return value / float(16**_HASH_DIGITS)


def keep_hash_py(request_id: str, tweet_id: int) -> float:
    """The plain-Python twin of :func:`keep_hash` (same bits, same double)."""
    digest = hashlib.sha256(f"{request_id}|{tweet_id}".encode()).hexdigest()
    return int(digest[:_HASH_DIGITS], 16) / 16**_HASH_DIGITS


def any_positive(df: DataFrame) -> Column:
    """True when any head's label is 1."""
    return F.greatest(*[F.col(c) for c in LABEL_COLUMNS]) > 0


def downsample_negatives(labelled: DataFrame, keep_rate: float) -> DataFrame:
    """Keep every row with a positive label and a deterministic ``keep_rate`` share of the rest.

    Adds ``keep_prob`` (1.0 for positives, ``keep_rate`` for all-negative rows).
    """
    positive = any_positive(labelled)
    return labelled.withColumn(
        KEEP_PROB_COLUMN, F.when(positive, F.lit(1.0)).otherwise(F.lit(float(keep_rate)))
    ).where(
        positive | (keep_hash(F.col("request_id"), F.col("tweet_id")) < F.lit(float(keep_rate)))
    )


# The broadcast plan tests a point against every row of its key (the hash join's condition),
# so it suits short histories: daily snapshots (3-9 rows per key) do; the stream views'
# per-minute rows (100-200 per key in the demo world) are sorted instead. (With the earlier
# broadcast plan, a per-point array scan, they made the demo's training data 80 s against
# 49 s sorted: docs/performance.md, #23.)
BROADCAST_MAX_HISTORY = 16


def broadcastable(
    features: DataFrame,
    view: View,
    broadcast_max_rows: int,
    max_history: int = BROADCAST_MAX_HISTORY,
) -> bool:
    """Whether a feature table suits the broadcast plan of :func:`asof_lookup`: at most
    ``broadcast_max_rows`` rows and on average at most ``max_history`` rows per entity key.

    Decided on rows: the broadcast copy holds one object per row, so rows, not compressed
    bytes, say what it costs (a narrow 5M-row view, 43 MB of Parquet, filled a 4 GB driver;
    docs/performance.md). A table read from Parquet is measured in the driver without a Spark
    job (rows from the footers, distinct keys from the key columns: 0.4 s less of the bench's
    1M-row run than two Spark jobs per view); any other frame by Spark.
    """
    if broadcast_max_rows <= 0:
        return False
    keys = list(ENTITIES[view.entity].join_keys)
    files = [unquote(urlparse(f).path) for f in features.inputFiles()]
    rows = parquet_rows(files) if files else features.count()
    if rows > broadcast_max_rows:
        return False
    if files:
        distinct = ds.dataset(files, format="parquet").to_table(columns=keys)
        found = distinct.group_by(keys).aggregate([]).num_rows
    else:
        found = features.select(*keys).distinct().count()
    return rows <= max_history * max(found, 1)


def asof_lookup(
    points: DataFrame,
    features: DataFrame,
    view: View,
    key_columns: Mapping[str, str] | None = None,
    ts_column: str = "served_at",
    id_columns: tuple[str, ...] = ID_KEYS,
    broadcast: bool = False,
    key_filter_max_keys: int = 0,
) -> DataFrame:
    """For each point: ``view``'s features as of ``points[ts_column]`` (Feast semantics).

    The view's rows become validity intervals (:func:`feature_intervals`: from a row's event
    time to the key's next one), and each point is joined on its key to the interval holding
    its moment; the TTL then nulls a stale row. A key's intervals do not overlap, so the join
    neither multiplies points nor needs a per-point aggregate, and Spark runs it as one
    generated-code join with the range as its condition. Two plans, same rows:

    - broadcast (``broadcast``, for a small feature table: :func:`broadcastable`): the
      intervals go to every task (a broadcast hash join); no shuffle of the points at all.
    - sort-merge (default): points and intervals are both sorted by key.

    The earlier plans (a window over the union of points and feature rows; a per-point scan
    of a broadcast array) cost 1.5-2.7x more (docs/performance.md, #27).

    Args:
        points: rows to look up; ``id_columns`` must identify a row.
        features: the view's feature table (keys, event_timestamp, created_timestamp, ...).
        view: the view's declaration (entity keys, ttl, feature names).
        key_columns: entity join key -> the column of ``points`` holding it (default: same).
        ts_column: the point in time of each row.
        id_columns: the columns of ``points`` carried to the result (at least a row's id;
            any of its columns may be carried, which spares the caller a join back).
        broadcast: use the broadcast plan.
        key_filter_max_keys: sort-merge plan: when the points hold at most this many keys
            (0: never), feature rows of other keys are dropped before the sort, by a
            broadcast semi-join on a 64-bit hash of the key (a collision only keeps a row
            no point can join). The 20,000-user world's affinity view holds every pair
            active in 28 days; the window's examples only some of them
            (docs/performance.md, #27).

    Returns:
        ``id_columns``, the view's features (null when no row is within the TTL) and
        :func:`source_ts_column` of the feature row used.
    """
    keys = list(ENTITIES[view.entity].join_keys)
    mapping = dict(key_columns or {})
    src = source_ts_column(view.name)
    point_keys = [f"_k{i}" for i in range(len(keys))]
    feature_keys = [f"_fk{i}" for i in range(len(keys))]
    lhs = points.select(
        *id_columns,
        *[
            F.col(mapping.get(k, k)).cast("bigint").alias(a)
            for k, a in zip(keys, point_keys, strict=True)
        ],
        F.col(ts_column).alias("_ts"),
    )
    if key_filter_max_keys > 0 and not broadcast:
        wanted = lhs.select(F.xxhash64(*point_keys).alias("_kh")).distinct()
        if wanted.count() <= key_filter_max_keys:
            features = features.join(
                F.broadcast(wanted),
                F.xxhash64(*[F.col(k).cast("bigint") for k in keys]) == F.col("_kh"),
                "left_semi",
            )
    intervals = feature_intervals(features, view, feature_keys)
    if broadcast:
        intervals = F.broadcast(intervals)
    ts = F.col("_ts")
    matches = [F.col(p) == F.col(f) for p, f in zip(point_keys, feature_keys, strict=True)]
    within = (ts >= F.col("_from")) & (F.col("_to").isNull() | (ts < F.col("_to")))
    joined = lhs.join(intervals, [*matches, within], "left")
    # Feast's ttl is a timedelta: plain microseconds. (``ts - INTERVAL n DAYS`` is calendar
    # arithmetic through zoned dates: 4 % of the bench's CPU at 10M rows, docs/performance.md.)
    ttl_us = view.ttl_days * 86_400 * 1_000_000
    fresh = F.unix_micros(F.col(f"_feat.{src}")) >= F.unix_micros(ts) - F.lit(ttl_us)
    return joined.select(
        *id_columns,
        *[F.when(fresh, F.col(f"_feat.{n}")).alias(n) for n in view.feature_names],
        F.when(fresh, F.col(f"_feat.{src}")).alias(src),
    )


def feature_intervals(features: DataFrame, view: View, key_aliases: list[str]) -> DataFrame:
    """``view``'s rows as validity intervals: keys (as bigint ``key_aliases``), ``_from`` (the
    row's ``event_timestamp``), ``_to`` (the key's next event time; null for its last row) and
    ``_feat`` (the features and :func:`source_ts_column`).

    Of rows sharing a key and an event time only the greatest ``created_timestamp`` is kept, so
    a key's intervals do not overlap and a moment falls in at most one of them.
    """
    keys = ENTITIES[view.entity].join_keys
    feat = F.struct(
        *[F.col(n) for n in view.feature_names],
        F.col("event_timestamp").alias(source_ts_column(view.name)),
    )
    rows = features.select(
        *[F.col(k).cast("bigint").alias(a) for k, a in zip(keys, key_aliases, strict=True)],
        F.col("event_timestamp").alias("_from"),
        F.col("created_timestamp").alias("_cts"),
        feat.alias("_feat"),
    )
    # The next row by (event time, created time): a row followed by one of the same event
    # time is superseded; otherwise the next row's event time ends this row's interval.
    following = Window.partitionBy(*key_aliases).orderBy("_from", "_cts")
    return (
        rows.withColumn("_to", F.lead("_from").over(following))
        .where(F.col("_to").isNull() | (F.col("_to") > F.col("_from")))
        .drop("_cts")
    )


def asof_join(
    left: DataFrame,
    features: DataFrame,
    view: View,
    key_columns: Mapping[str, str] | None = None,
    ts_column: str = "served_at",
    id_columns: tuple[str, ...] = ID_KEYS,
    broadcast: bool = False,
    carry: bool = False,
) -> DataFrame:
    """``left`` plus ``view``'s features as of ``ts_column`` (see :func:`asof_lookup`).

    With ``broadcast`` (for a view :func:`broadcastable` admits; the caller decides once) the
    view is looked up by broadcast with every column of ``left`` carried along (no shuffle at
    all). Otherwise it is sort-merge joined with the points: by default on a narrow frame
    (ids, keys, time) joined back on ``id_columns``, so wide rows are not shuffled once per
    view; with ``carry`` every column of ``left`` goes through the join instead (one shuffle
    instead of two: the better plan for a narrow ``left``).
    """
    if carry or broadcast:
        return asof_lookup(
            left, features, view, key_columns, ts_column, tuple(left.columns), broadcast
        )
    mapping = dict(key_columns or {})
    point_keys = {mapping.get(k, k) for k in ENTITIES[view.entity].join_keys}
    points = left.select(*dict.fromkeys([*id_columns, *sorted(point_keys), ts_column]))
    found = asof_lookup(points, features, view, key_columns, ts_column, id_columns)
    return left.join(found, list(id_columns), "left")


def request_time(df: DataFrame) -> Column:
    """The moment serving reads features and computes context for a row: the request's
    ``requested_at`` when the row has it, else ``served_at``."""
    if "requested_at" in df.columns:
        return F.coalesce(F.col("requested_at"), F.col("served_at"))
    return F.col("served_at")


def join_features(
    examples: DataFrame,
    views: Mapping[str, DataFrame],
    broadcast_max_rows: int = 0,
    broadcast_max_history: int = BROADCAST_MAX_HISTORY,
    key_filter_max_keys: int = 0,
) -> DataFrame:
    """Every model view joined as of :func:`request_time` (``examples`` keyed by
    :data:`ID_KEYS`).

    A view that :func:`broadcastable` admits is looked up by broadcast with every column
    carried along (no shuffle). A larger one is looked up on a narrow frame taken from
    ``examples`` and joined back by id, so the wide rows are shuffled once instead of once per
    view. ``examples`` is read once per view: cache it. ``key_filter_max_keys``: see
    :func:`asof_lookup` (sorted views only).
    """
    missing = [name for name in JOIN_ORDER if name not in views]
    if missing:
        raise FeedrankError(f"feature table {missing[0]} is missing (run feedrank features)")
    ids = list(ID_KEYS)
    at = "_features_at"
    out = examples.withColumn(at, request_time(examples))
    points = out.select(*ids, "user_id", "author_id", at)
    first = JOIN_ORDER[0]  # tweet_attributes: its tweet_topic keys the user_topic view
    if broadcastable(views[first], VIEWS[first], broadcast_max_rows, broadcast_max_history):
        out = asof_lookup(out, views[first], VIEWS[first], None, at, tuple(out.columns), True)
        with_topic = asof_lookup(
            points, views[first], VIEWS[first], None, at, tuple(points.columns), True
        ).select(*points.columns, "tweet_topic")
    else:
        tweet = asof_lookup(
            points,
            views[first],
            VIEWS[first],
            ts_column=at,
            key_filter_max_keys=key_filter_max_keys,
        )
        out = out.join(tweet, ids, "left")
        with_topic = points.join(tweet.select(*ids, "tweet_topic"), ids, "left")
    for name in JOIN_ORDER[1:]:
        view, keys = VIEWS[name], VIEW_KEY_COLUMNS.get(name)
        if broadcastable(views[name], view, broadcast_max_rows, broadcast_max_history):
            out = asof_lookup(out, views[name], view, keys, at, tuple(out.columns), True)
        else:
            found = asof_lookup(
                with_topic if keys else points,
                views[name],
                view,
                keys,
                at,
                key_filter_max_keys=key_filter_max_keys,
            )
            out = out.join(found, ids, "left")
    return out.drop(at)


def device_codes(feed_requests: DataFrame) -> DataFrame:
    """``request_id`` -> ``device_code`` (index in :data:`feedrank.schemas.DEVICES`) and
    ``requested_at`` (the moment serving computes context for)."""
    codes = F.create_map(*[x for i, d in enumerate(DEVICES) for x in (F.lit(d), F.lit(i))])
    return feed_requests.select(
        "request_id",
        codes[F.col("device")].cast("bigint").alias("device_code"),
        "requested_at",
    ).dropDuplicates(["request_id"])


def add_context(df: DataFrame) -> DataFrame:
    """Add :data:`feedrank.feature_spec.CONTEXT_FEATURES` via the shared vectorized function.

    Needs ``served_at``, ``device_code``, ``tweet_created_ts`` and ``user_active_hour_peak``.
    Context is computed at the request's ``requested_at`` when the row has it (serving
    computes it when the request arrives, before it is served), else at ``served_at``.
    A pandas UDF over those four columns: only they go to Python and back (a ``mapInPandas``
    pass sent every column of the ~100-column rows through Arrow, docs/performance.md #27).
    Marked non-deterministic so the optimizer never copies the call into each of the struct's
    fields: the Python function runs exactly once per row.
    """
    names = [f.name for f in CONTEXT_FEATURES]
    schema = T.StructType([T.StructField(n, T.DoubleType()) for n in names])

    def with_context(
        request_ts: pd.Series,
        device_code: pd.Series,
        tweet_created_ts: pd.Series,
        user_active_hour_peak: pd.Series,
    ) -> pd.DataFrame:
        values = context_features(request_ts, device_code, tweet_created_ts, user_active_hour_peak)
        return pd.DataFrame({n: values[n] for n in names}, index=request_ts.index)

    context = F.pandas_udf(with_context, schema).asNondeterministic()
    staged = df.withColumn(
        "_context",
        context(
            request_ts(request_time(df)),
            F.col("device_code"),
            F.col("tweet_created_ts"),
            F.col("user_active_hour_peak"),
        ),
    )
    return staged.select(*df.columns, *[F.col(f"_context.{n}").alias(n) for n in names])


def request_ts(served_at: Column) -> Column:
    """Epoch seconds of a timestamp (microseconds / 1e6, as the reference computes it)."""
    return F.unix_micros(served_at) / 1e6


def _output_types() -> dict[str, str]:
    types = {
        "request_id": "string",
        "user_id": "bigint",
        "tweet_id": "bigint",
        "author_id": "bigint",
        "served_at": "timestamp",
        "position": "int",
        KEEP_PROB_COLUMN: "double",
        **dict.fromkeys(LABEL_COLUMNS, "bigint"),
    }
    for view in VIEWS.values():
        for feat in view.features:
            types[feat.name] = "bigint" if feat.dtype == "int64" else "double"
    types.update({f.name: "double" for f in CONTEXT_FEATURES})
    return types


def build_training_examples(
    impressions: DataFrame,
    engagements: DataFrame,
    feed_requests: DataFrame,
    views: Mapping[str, DataFrame],
    attribution_window_s: int,
    negative_keep_rate: float,
    validation_start: dt.date,
    broadcast_max_rows: int = 0,
    key_filter_max_keys: int = 0,
) -> DataFrame:
    """Labelled, downsampled, point-in-time-joined examples.

    Returns:
        :func:`feedrank.feature_spec.training_columns` in order, then ``split``
        (``train`` before ``validation_start``, else ``validation``) and one
        :func:`source_ts_column` per view (for the audit; drop before training).
    """
    labelled = attribute_labels(impressions, engagements, attribution_window_s)
    return examples_from_labels(
        labelled,
        feed_requests,
        views,
        negative_keep_rate,
        validation_start,
        broadcast_max_rows,
        key_filter_max_keys,
    )


def examples_from_labels(
    labelled: DataFrame,
    feed_requests: DataFrame,
    views: Mapping[str, DataFrame],
    negative_keep_rate: float,
    validation_start: dt.date,
    broadcast_max_rows: int = 0,
    key_filter_max_keys: int = 0,
) -> DataFrame:
    """The part of :func:`build_training_examples` after :func:`attribute_labels`; views of
    at most ``broadcast_max_rows`` rows are looked up by broadcast, the others sorted, their
    rows of keys no example holds dropped first (``key_filter_max_keys``,
    :func:`join_features`)."""
    # Impressions are unique per (request, tweet); the ids below rely on it. Duplicates are
    # dropped after the downsampling (a filter on each row's own labels and ids), so only the
    # kept rows go through the dedup's shuffle (5.65M instead of 18.6M rows on the
    # 20,000-user world, docs/performance.md #27).
    kept = (
        downsample_negatives(labelled, negative_keep_rate)
        .dropDuplicates(list(ID_KEYS))
        .join(device_codes(feed_requests), "request_id", "left")
    )
    # Every view reads the kept rows: compute them once.
    kept = kept.cache()
    joined = add_context(
        join_features(kept, views, broadcast_max_rows, key_filter_max_keys=key_filter_max_keys)
    )
    types = _output_types()
    split = F.when(F.to_date("served_at") >= F.lit(validation_start), "validation").otherwise(
        "train"
    )
    return joined.select(
        *[F.col(c).cast(types[c]).alias(c) for c in training_columns()],
        split.alias("split"),
        "requested_at",
        *[source_ts_column(v) for v in JOIN_ORDER],
    )


def negative_keep_rates(labelled: DataFrame, negative_keep_rate: float) -> dict[str, float]:
    """Per head: kept negatives / all negatives (the ``w`` of ``q = p / (p + (1 - p) / w)``).

    A head's negatives include rows positive for another head, which are always kept, so the
    effective rate is above the configured one.
    """
    kept = any_positive(labelled) | (
        keep_hash(F.col("request_id"), F.col("tweet_id")) < F.lit(float(negative_keep_rate))
    )
    row = labelled.agg(
        *[F.sum((F.col(f"label_{h}") == 0).cast("bigint")).alias(f"n_{h}") for h in HEADS],
        *[F.sum(((F.col(f"label_{h}") == 0) & kept).cast("bigint")).alias(f"k_{h}") for h in HEADS],
    ).collect()[0]
    return {
        h: (row[f"k_{h}"] / row[f"n_{h}"]) if row[f"n_{h}"] else float(negative_keep_rate)
        for h in HEADS
    }


def schema_sha256() -> str:
    """Hash of the training-examples column names and types, in order."""
    types = _output_types()
    text = "\n".join(f"{c}:{types[c]}" for c in training_columns())
    return hashlib.sha256(text.encode()).hexdigest()


def _arrow_training_schema() -> pa.Schema:
    arrow = {
        "string": pa.string(),
        "bigint": pa.int64(),
        "int": pa.int32(),
        "double": pa.float64(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    types = _output_types()
    return pa.schema([pa.field(c, arrow[types[c]]) for c in training_columns()])


def _input_partitions(
    settings: Settings, start: dt.date, end: dt.date, window_days: int
) -> dict[str, list[Path]]:
    lake_root, feat_root = settings.paths.lake, settings.paths.features
    found = {
        "impressions": lake.existing_partitions(lake_root, "impressions", start, end),
        "engagements": lake.existing_partitions(
            lake_root, "engagements", start, end + dt.timedelta(days=window_days)
        ),
        # A request just before midnight may be served just after it.
        "feed_requests": lake.existing_partitions(
            lake_root, "feed_requests", start - dt.timedelta(days=1), end
        ),
    }
    for name in MODEL_VIEWS:
        view = VIEWS[name]
        # Daily snapshot of D has event_timestamp D+1: reach back ttl + 1 partitions, and
        # stop at end - 1: the snapshot of ``end`` is stamped after every impression of the
        # interval (4.3M rows no point can join on the 20,000-user world).
        last = end - dt.timedelta(days=1) if view.kind == "daily" else end
        found[name] = lake.existing_partitions(
            feat_root, name, start - dt.timedelta(days=view.ttl_days + 1), last
        )
    return found


def run_training_data(
    spark: SparkSession, settings: Settings, start: dt.date, end: dt.date, run_id: str | None = None
) -> Path:
    """Build the examples of impressions served in [start, end] into ``<training>/<run_id>``.

    The last ``settings.training_data.validation_days`` days are the validation split. The run
    folder is written to a temp folder and swapped in, so a rerun replaces it whole and a
    failure leaves the previous run untouched.

    Returns:
        The run folder.
    """
    lake.check_interval(start, end)
    td = settings.training_data
    days = lake.days_between(start, end)
    if len(days) <= td.validation_days:
        raise FeedrankError(
            f"interval {start}..{end} has {len(days)} day(s); need more than "
            f"validation_days={td.validation_days} for a time split"
        )
    validation_start = days[-td.validation_days]
    window_days = -(-td.attribution_window_s // 86400)
    parts = _input_partitions(settings, start, end, window_days)
    if not parts["impressions"]:
        raise FileNotFoundError(
            f"no impressions partitions in {start}..{end} under {settings.paths.lake}"
        )
    missing = [v for v in MODEL_VIEWS if not parts[v]]
    if missing:
        raise FeedrankError(
            f"no feature partitions for {', '.join(missing)} near "
            f"{start}..{end}; run feedrank features first"
        )
    size_shuffle_partitions(spark, settings, [p for paths in parts.values() for p in paths])
    # Only the impression columns an example keeps: the logged feature vectors, model
    # version and arm would otherwise ride through the label join and the dedup.
    impressions = spark_io.read_partitions(
        spark, parts["impressions"], lake.table_schema("impressions")
    ).select(*ID_COLUMNS)
    engagements = spark_io.read_partitions(
        spark, parts["engagements"], lake.table_schema("engagements")
    )
    feed_requests = spark_io.read_partitions(
        spark, parts["feed_requests"], lake.table_schema("feed_requests")
    )
    views = {
        v: spark_io.read_partitions(spark, parts[v], lake.feature_table_schema(v))
        for v in MODEL_VIEWS
    }

    labelled = attribute_labels(impressions, engagements, td.attribution_window_s).cache()
    keep_rates = negative_keep_rates(labelled, td.negative_keep_rate)
    examples = examples_from_labels(
        labelled,
        feed_requests,
        views,
        td.negative_keep_rate,
        validation_start,
        td.asof_broadcast_max_rows,
        td.asof_key_filter_max_keys,
    ).cache()
    counts = (
        examples.groupBy("split")
        .agg(F.count("*").alias("rows"), *[F.sum(c).alias(c) for c in LABEL_COLUMNS])
        .collect()
    )
    by_split = {r["split"]: r for r in counts}
    run_id = run_id or f"{start.isoformat()}_{end.isoformat()}"
    target = settings.paths.training / run_id
    home = settings.paths.home

    def build(tmp: Path) -> None:
        spark_io.write_spark_parquet(
            examples.select(*training_columns(), "split"), tmp / "_splits", partition_by="split"
        )
        for split in SPLITS:
            fresh, final = tmp / "_splits" / f"split={split}", tmp / split
            if fresh.is_dir():
                spark_io.rename_parts(fresh)
                fresh.rename(final)
            else:  # an empty split still gets a readable, typed file
                final.mkdir(parents=True)
                pq.write_table(_arrow_training_schema().empty_table(), final / "part-00000.parquet")
        shutil.rmtree(tmp / "_splits")
        audit = examples.select(
            "request_id",
            "tweet_id",
            "served_at",
            "requested_at",
            *[source_ts_column(v) for v in JOIN_ORDER],
        )
        spark_io.write_spark_parquet(audit, tmp / AUDIT_DIR)
        spark_io.rename_parts(tmp / AUDIT_DIR)
        manifest = {
            "run_id": run_id,
            "rows": {s: int(by_split[s]["rows"]) if s in by_split else 0 for s in SPLITS},
            "positives": {
                s: {h: int(by_split[s][f"label_{h}"] or 0) if s in by_split else 0 for h in HEADS}
                for s in SPLITS
            },
            "keep_rates": keep_rates,
            "negative_keep_rate": td.negative_keep_rate,
            "attribution_window_s": td.attribution_window_s,
            "train_dates": [d.isoformat() for d in days if d < validation_start],
            "validation_dates": [d.isoformat() for d in days if d >= validation_start],
            "input_partitions": {
                name: [
                    str(p.relative_to(home)) if p.is_relative_to(home) else str(p) for p in paths
                ]
                for name, paths in parts.items()
            },
            "features": model_features(),
            "feature_service": FEATURE_SERVICE,
            "columns": training_columns(),
            "id_columns": list(ID_COLUMNS),
            "schema_sha256": schema_sha256(),
            "content_sha256": {s: lake.content_hash(tmp / s) for s in SPLITS},
        }
        publish.write_json(tmp / TRAINING_MANIFEST, manifest)

    try:
        publish.write_dir_atomic(target, build)
    finally:
        examples.unpersist()
        labelled.unpersist()
    log.info("training examples %s..%s -> %s", start, end, target)
    return target
