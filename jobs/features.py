"""Feature jobs: lake DataFrames -> the feature tables of :data:`feedrank.feature_spec.VIEWS`.

Long because: every feature view's Spark definition sits beside the others, so the spec and the
jobs compare view by view.

Every function here is pure (DataFrames in, DataFrame out); :func:`run_features` is the thin
shell that reads the lake for an explicit date interval and writes date partitions.

Time semantics (the point-in-time contract Feast relies on):

- daily views: the snapshot of day D counts events strictly before D+1 00:00 UTC and carries
  ``event_timestamp`` = D+1 00:00 UTC (partition ``date=D``). In a view entities can leave
  (``View.leaves``: a user×author or user×topic pair with no activity in 28 days, a tweet
  past its 28 days), the first snapshot at which an entity is no longer in the view is a
  tombstone row (all features null), for the reason given for stream views below;
- ``tweet_attributes``: one row per tweet, ``event_timestamp`` = the tweet's ``created_at``;
- stream views: a row at every :data:`STREAM_STEP_S` step T while a counter is non-zero; the
  value at T counts positive engagements in [T - window, T), i.e. strictly before T, and
  ``event_timestamp`` = T (partition ``date(T)``). The step at which every counter of an
  entity is back to zero gets a tombstone row (all features null): the entity leaves the
  view, as it leaves the online store when ``feedrank stream-features`` pushes the same
  tombstone. A quiet entity is therefore missing on both sides, whether its tombstone is
  within the view's TTL or older (Feast's online read ignores the TTL, so a pushed 0 would
  be served forever while the training join drops the row after a day).

``created_timestamp`` equals ``event_timestamp``: it must be a function of the data (not of
the wall clock) for reruns to reproduce the same bytes.

Target encodings (``*_te_*``) are smoothed toward the global rate with
:data:`feedrank.feature_spec.TARGET_ENCODING_SMOOTHING` and use all history before the
snapshot's cutoff, so they are out-of-fold for every impression that can join them (served
at or after the cutoff).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import operator
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from feedrank import lake
from feedrank.config import HEADS, POSITIVE_HEADS, Settings
from feedrank.feature_spec import ENTITIES, TARGET_ENCODING_SMOOTHING, VIEWS, View
from feedrank.spark import size_shuffle_partitions
from jobs import spark_io
from jobs.feature_history import HistoryFold, SnapshotRecord, code_digest, plan_history

log = logging.getLogger("feedrank.features")

STREAM_STEP_S = 300
# How far back each job reads the lake: the longest window (28 d) plus the stream lookback.
LOOKBACK_DAYS = 28
SPARK_TYPES = {"int64": "bigint", "float64": "double"}
_TOMBSTONE = "_tombstone"  # daily rows whose features :func:`_finish_daily` nulls
_PREV = "_prev_"  # :func:`_windowed`'s sums at the snapshot of the day before


def _snapshots(spark: SparkSession, days: list[dt.date]) -> DataFrame:
    return spark.createDataFrame([(d,) for d in days], "snap date")


def _cutoff(snap: str = "snap") -> Column:
    """D+1 00:00 UTC as a timestamp (the session runs in UTC)."""
    return F.date_add(F.col(snap), 1).cast("timestamp")


def _daily(df: DataFrame, keys: list[str], ts: str, values: Mapping[str, Column]) -> DataFrame:
    """Per key and UTC day: sum of each value expression (one row per event in)."""
    return df.select(
        *keys,
        F.to_date(F.col(ts)).alias("day"),
        *[expr.alias(name) for name, expr in values.items()],
    )


def _windowed(
    daily: DataFrame,
    snaps: DataFrame,
    keys: list[str],
    sums: Mapping[str, tuple[str, int | None]],
    maxes: Mapping[str, tuple[str, int | None]] | None = None,
    day_before: bool = False,
    history: HistoryFold | None = None,
    site: str = "",
) -> DataFrame:
    """For every snapshot day D and key: aggregates over days in (D - w, D] (None: all).

    ``daily`` rows carry a ``day``; only days <= D are seen, i.e. events before D+1 00:00.
    They are summed per key and day first, so the join below repeats one row per key and day
    for every later snapshot, not one row per event. The key-day rows are then partitioned by
    key, so those repeated rows are summed where they are made: the only shuffles carry
    events and key-day rows, never the (key, day, snapshot) rows (65M on the 20,000-user
    world's user×author pairs, docs/performance.md #27).

    With ``day_before``, every sum also comes as ``_prev_<name>``: the same sum at the
    snapshot of D - 1, from the same rows (what :func:`_leaving` needs to know whether the
    entity was in the view the day before, the first snapshot of a run included).

    With ``history``, the key-day rows up to its cut are folded into one row per key under
    the name ``site`` (:class:`jobs.feature_history.HistoryFold`); every window must then end
    after the cut, which is checked here.
    """
    maxes = maxes or {}
    sum_columns = sorted({c for c, _ in sums.values()})
    max_columns = sorted({c for c, _ in maxes.values()})
    per_day = daily.groupBy(*keys, "day").agg(
        *[F.sum(c).alias(c) for c in sum_columns], *[F.max(c).alias(c) for c in max_columns]
    )
    if history is not None:
        windows = [w for _, w in [*sums.values(), *maxes.values()] if w is not None]
        reach = max(windows, default=0) + (1 if day_before else 0)
        if reach > LOOKBACK_DAYS + 1:
            raise ValueError(f"{site}: a {reach}-day window reaches before the history cut")
        per_day = history.fold(site, per_day, keys, sum_columns, max_columns)
    if keys:
        per_day = per_day.repartition(*keys)
    joined = per_day.join(F.broadcast(snaps), F.col("day") <= F.col("snap"))

    def in_window(window: int | None, lag_days: int = 0) -> Column:
        last = F.date_sub("snap", lag_days)
        seen = F.lit(True) if lag_days == 0 else F.col("day") <= last
        return seen if window is None else seen & (F.col("day") > F.date_sub(last, window))

    aggs = [
        F.sum(F.when(in_window(w), F.col(c)).otherwise(0)).cast("bigint").alias(name)
        for name, (c, w) in sums.items()
    ]
    if day_before:
        aggs += [
            F.sum(F.when(in_window(w, 1), F.col(c)).otherwise(0)).cast("bigint").alias(_PREV + name)
            for name, (c, w) in sums.items()
        ]
    aggs += [F.max(F.when(in_window(w), F.col(c))).alias(name) for name, (c, w) in maxes.items()]
    return joined.groupBy(*keys, "snap").agg(*aggs)


def _rate(num: str, den: str) -> Column:
    """num / den, null when there is no denominator (unknown, not zero)."""
    return F.when(F.col(den) > 0, F.col(num) / F.col(den)).cast("double")


def _target_encoding(pos: str, n: str, prior: str) -> Column:
    m = TARGET_ENCODING_SMOOTHING
    return ((F.col(pos) + F.lit(m) * F.col(prior)) / (F.col(n) + F.lit(m))).cast("double")


def _finish(
    df: DataFrame, view: View, event_ts: Column, tombstone: Column | None = None
) -> DataFrame:
    """Exactly the contract's columns, types and order, plus the ``date`` partition column;
    every feature null on the rows where ``tombstone`` holds."""

    def value(name: str) -> Column:
        return F.col(name) if tombstone is None else F.when(~tombstone, F.col(name))

    keys = list(ENTITIES[view.entity].join_keys)
    return df.select(
        *[F.col(k).cast("bigint").alias(k) for k in keys],
        event_ts.alias("event_timestamp"),
        event_ts.alias("created_timestamp"),
        *[value(f.name).cast(SPARK_TYPES[f.dtype]).alias(f.name) for f in view.features],
        F.col("date"),
    )


def _finish_daily(df: DataFrame, view: View) -> DataFrame:
    tombstone = F.col(_TOMBSTONE) if _TOMBSTONE in df.columns else None
    return _finish(df.withColumn("date", F.col("snap")), view, _cutoff(), tombstone)


def _leaving(windowed: DataFrame, active: Callable[[Callable[[str], Column]], Column]) -> DataFrame:
    """The rows of ``windowed`` whose entity is ``active``, plus a tombstone (flagged
    ``_tombstone``; :func:`_finish_daily` nulls its features) at the first snapshot where it
    no longer is.

    ``windowed`` comes from :func:`_windowed` with ``day_before``; ``active`` builds the test
    from a column getter over its sums, and is applied once to the snapshot's sums and once to
    the day before's (``_prev_*``), so "active the day before" needs no second pass or join.
    A key with no row the day before has zero sums there: ``active`` must be false on zeros.
    """
    prev = [c for c in windowed.columns if c.startswith(_PREV)]
    now, before = active(F.col), active(lambda name: F.col(_PREV + name))
    return windowed.where(now | before).withColumn(_TOMBSTONE, ~now).drop(*prev)


def global_rates(
    impressions: DataFrame,
    engagements: DataFrame,
    snaps: DataFrame,
    history: HistoryFold | None = None,
) -> DataFrame:
    """Per snapshot: the all-history rate of each head (engagements per impression)."""
    daily = _daily(impressions.select("served_at"), [], "served_at", {"imps": F.lit(1)})
    daily = daily.unionByName(
        _daily(
            engagements,
            [],
            "engaged_at",
            {f"e_{h}": (F.col("head") == h).cast("int") for h in HEADS},
        ),
        allowMissingColumns=True,
    ).fillna(0)
    sums = {"g_imps": ("imps", None), **{f"g_e_{h}": (f"e_{h}", None) for h in HEADS}}
    totals = _windowed(daily, snaps, [], sums, history=history, site="global_rates")
    return totals.select("snap", *[_rate(f"g_e_{h}", "g_imps").alias(f"prior_{h}") for h in HEADS])


def user_engagement_daily(
    users: DataFrame,
    follows: DataFrame,
    feed_requests: DataFrame,
    impressions: DataFrame,
    engagements: DataFrame,
    snaps: DataFrame,
    prior: DataFrame | None = None,
    history: HistoryFold | None = None,
) -> DataFrame:
    """The ``user_engagement_daily`` view for every snapshot day in ``snaps``."""
    view = VIEWS["user_engagement_daily"]
    heads = {f"e_{h}": (F.col("head") == h).cast("int") for h in HEADS}
    daily = (
        _daily(users, ["user_id"], "created_at", {"known": F.lit(1)})
        .unionByName(
            _daily(impressions, ["user_id"], "served_at", {"imps": F.lit(1)}),
            allowMissingColumns=True,
        )
        .unionByName(
            _daily(engagements, ["user_id"], "engaged_at", heads), allowMissingColumns=True
        )
        .unionByName(
            _daily(feed_requests, ["user_id"], "requested_at", {"reqs": F.lit(1)}),
            allowMissingColumns=True,
        )
        .unionByName(
            _daily(
                follows.withColumnRenamed("follower_id", "user_id"),
                ["user_id"],
                "created_at",
                {"follows": F.lit(1)},
            ),
            allowMissingColumns=True,
        )
        .fillna(0)
    )
    sums: dict[str, tuple[str, int | None]] = {
        "user_requests_7d": ("reqs", 7),
        "user_following_count": ("follows", None),
        "imps_all": ("imps", None),
        **{f"e_{h}_all": (f"e_{h}", None) for h in HEADS},
    }
    for w in (1, 7, 28):
        sums[f"user_impressions_{w}d"] = ("imps", w)
        sums.update({f"e_{h}_{w}d": (f"e_{h}", w) for h in HEADS})
    stats = _windowed(daily, snaps, ["user_id"], sums, history=history, site="user_engagement")

    hourly = feed_requests.select(
        "user_id",
        F.to_date("requested_at").alias("day"),
        F.hour("requested_at").alias("hour"),
        F.lit(1).alias("n"),
    )
    by_hour = _windowed(
        hourly, snaps, ["user_id", "hour"], {"n": ("n", 28)}, history=history, site="user_hours"
    )
    # Most requests wins; ties go to the earliest hour.
    peak = (
        by_hour.where("n > 0")
        .groupBy("user_id", "snap")
        .agg(F.max(F.struct("n", (-F.col("hour")).alias("neg_hour"))).alias("best"))
        .select("user_id", "snap", (-F.col("best.neg_hour")).alias("user_active_hour_peak"))
    )
    if prior is None:
        prior = global_rates(impressions, engagements, snaps, history)
    out = (
        stats.join(peak, ["user_id", "snap"], "left")
        .join(F.broadcast(prior), "snap", "left")
        .fillna({"user_active_hour_peak": -1})
    )
    for w in (1, 7, 28):
        for h in HEADS:
            out = out.withColumn(
                f"user_{h}_rate_{w}d", _rate(f"e_{h}_{w}d", f"user_impressions_{w}d")
            )
    for h in HEADS:
        out = out.withColumn(
            f"user_te_{h}", _target_encoding(f"e_{h}_all", "imps_all", f"prior_{h}")
        )
    return _finish_daily(out, view)


def author_stats_daily(
    tweets: DataFrame,
    follows: DataFrame,
    impressions: DataFrame,
    engagements: DataFrame,
    snaps: DataFrame,
    prior: DataFrame | None = None,
    history: HistoryFold | None = None,
) -> DataFrame:
    """The ``author_stats_daily`` view: authors who posted or were shown before the cutoff."""
    view = VIEWS["author_stats_daily"]
    heads = {f"e_{h}": (F.col("head") == h).cast("int") for h in HEADS}
    daily = (
        _daily(tweets, ["author_id"], "created_at", {"tweets": F.lit(1)})
        .unionByName(
            _daily(impressions, ["author_id"], "served_at", {"imps": F.lit(1)}),
            allowMissingColumns=True,
        )
        .unionByName(
            _daily(engagements, ["author_id"], "engaged_at", heads), allowMissingColumns=True
        )
        .unionByName(
            _daily(
                follows.withColumnRenamed("followee_id", "author_id"),
                ["author_id"],
                "created_at",
                {"followers": F.lit(1)},
            ),
            allowMissingColumns=True,
        )
        .fillna(0)
    )
    sums: dict[str, tuple[str, int | None]] = {
        "author_followers": ("followers", None),
        "author_tweets_7d": ("tweets", 7),
        "author_impressions_7d": ("imps", 7),
        "tweets_all": ("tweets", None),
        "imps_all": ("imps", None),
        **{f"e_{h}_7d": (f"e_{h}", 7) for h in HEADS},
        **{f"e_{h}_all": (f"e_{h}", None) for h in HEADS},
    }
    out = (
        _windowed(daily, snaps, ["author_id"], sums, history=history, site="author_stats")
        .where((F.col("tweets_all") > 0) | (F.col("imps_all") > 0))
        .join(
            F.broadcast(
                prior
                if prior is not None
                else global_rates(impressions, engagements, snaps, history)
            ),
            "snap",
            "left",
        )
    )
    for h in HEADS:
        out = out.withColumn(f"author_{h}_rate_7d", _rate(f"e_{h}_7d", "author_impressions_7d"))
        out = out.withColumn(
            f"author_te_{h}", _target_encoding(f"e_{h}_all", "imps_all", f"prior_{h}")
        )
    return _finish_daily(out, view)


def tweet_attributes(tweets: DataFrame) -> DataFrame:
    """The ``tweet_attributes`` view: one row per tweet, knowable from its ``created_at``."""
    view = VIEWS["tweet_attributes"]
    out = tweets.select(
        "tweet_id",
        "created_at",
        (F.unix_micros("created_at") / 1e6).alias("tweet_created_ts"),
        F.col("topic").alias("tweet_topic"),
        F.col("has_media").cast("int").alias("tweet_has_media"),
        F.col("has_link").cast("int").alias("tweet_has_link"),
        F.col("length").alias("tweet_length"),
        F.to_date("created_at").alias("date"),
    ).dropDuplicates(["tweet_id"])
    return _finish(out, view, F.col("created_at"))


def tweet_authors(tweets: DataFrame) -> DataFrame:
    """The ``tweet_authors`` view (serving's tweet -> author lookup; same rows as attributes)."""
    out = tweets.select(
        "tweet_id",
        "created_at",
        F.col("author_id").alias("tweet_author_id"),
        F.to_date("created_at").alias("date"),
    ).dropDuplicates(["tweet_id"])
    return _finish(out, VIEWS["tweet_authors"], F.col("created_at"))


def tweet_stats_daily(
    tweets: DataFrame,
    impressions: DataFrame,
    engagements: DataFrame,
    snaps: DataFrame,
    history: HistoryFold | None = None,
) -> DataFrame:
    """The ``tweet_stats_daily`` view: cumulative counts of tweets posted in the last 28 days."""
    view = VIEWS["tweet_stats_daily"]
    heads = {f"e_{h}": (F.col("head") == h).cast("int") for h in HEADS}
    daily = (
        _daily(tweets, ["tweet_id"], "created_at", {"posted": F.lit(1)})
        .unionByName(
            _daily(impressions, ["tweet_id"], "served_at", {"imps": F.lit(1)}),
            allowMissingColumns=True,
        )
        .unionByName(
            _daily(engagements, ["tweet_id"], "engaged_at", heads), allowMissingColumns=True
        )
        .fillna(0)
    )
    sums = {
        "posted_28d": ("posted", LOOKBACK_DAYS),
        "tweet_impressions_total": ("imps", None),
        **{f"tweet_{h}_total": (f"e_{h}", None) for h in HEADS},
    }
    windowed = _windowed(
        daily, snaps, ["tweet_id"], sums, day_before=True, history=history, site="tweet_stats"
    )
    out = _leaving(windowed, lambda c: c("posted_28d") > 0)
    return _finish_daily(out, view)


def user_author_affinity_daily(
    follows: DataFrame,
    impressions: DataFrame,
    engagements: DataFrame,
    snaps: DataFrame,
    prior: DataFrame | None = None,
    history: HistoryFold | None = None,
) -> DataFrame:
    """The real graph: pairs with a follow edge or any impression/engagement in 28 days."""
    view = VIEWS["user_author_affinity_daily"]
    keys = ["user_id", "author_id"]
    heads = {f"e_{h}": (F.col("head") == h).cast("int") for h in HEADS}
    daily = (
        _daily(impressions, keys, "served_at", {"imps": F.lit(1)})
        .unionByName(
            _daily(
                engagements, keys, "engaged_at", {**heads, "last_engaged_at": F.col("engaged_at")}
            ),
            allowMissingColumns=True,
        )
        .unionByName(
            _daily(
                follows.select(
                    F.col("follower_id").alias("user_id"),
                    F.col("followee_id").alias("author_id"),
                    "created_at",
                ),
                keys,
                "created_at",
                {"follows": F.lit(1)},
            ),
            allowMissingColumns=True,
        )
        .fillna(0, subset=["imps", "follows", *heads])
    )
    sums: dict[str, tuple[str, int | None]] = {
        "follows_all": ("follows", None),
        "ua_impressions_28d": ("imps", 28),
        "imps_all": ("imps", None),
        **{f"ua_{h}_count_28d": (f"e_{h}", 28) for h in HEADS},
        **{f"e_{h}_all": (f"e_{h}", None) for h in ("like", "click")},
    }
    windowed = _windowed(
        daily,
        snaps,
        keys,
        sums,
        {"last_engaged_at": ("last_engaged_at", None)},
        day_before=True,
        history=history,
        site="user_author",
    )

    def active(c: Callable[[str], Column]) -> Column:
        activity = c("ua_impressions_28d") + sum(c(f"ua_{h}_count_28d") for h in HEADS)
        return (c("follows_all") > 0) | (activity > 0)

    out = (
        _leaving(windowed, active)
        .join(
            F.broadcast(
                prior
                if prior is not None
                else global_rates(impressions, engagements, snaps, history)
            ),
            "snap",
            "left",
        )
        .withColumn("ua_follows", (F.col("follows_all") > 0).cast("bigint"))
        .withColumn(
            "ua_days_since_last_engagement",
            (F.unix_micros(_cutoff()) - F.unix_micros("last_engaged_at")) / (86400 * 1e6),
        )
        .withColumn("ua_te_like", _target_encoding("e_like_all", "imps_all", "prior_like"))
        .withColumn("ua_te_click", _target_encoding("e_click_all", "imps_all", "prior_click"))
    )
    return _finish_daily(out, view)


def user_topic_affinity_daily(
    tweets: DataFrame,
    impressions: DataFrame,
    engagements: DataFrame,
    snaps: DataFrame,
    history: HistoryFold | None = None,
) -> DataFrame:
    """A reader's 28-day history with each topic (topic taken from the tweets table)."""
    view = VIEWS["user_topic_affinity_daily"]
    keys = ["user_id", "topic"]
    topic_of = tweets.select("tweet_id", "topic").dropDuplicates(["tweet_id"])
    pos = F.col("head").isin(*POSITIVE_HEADS).cast("int")
    daily = (
        _daily(impressions.join(topic_of, "tweet_id"), keys, "served_at", {"imps": F.lit(1)})
        .unionByName(
            _daily(
                engagements.join(topic_of, "tweet_id"),
                keys,
                "engaged_at",
                {
                    "pos": pos,
                    "likes": (F.col("head") == "like").cast("int"),
                    "clicks": (F.col("head") == "click").cast("int"),
                },
            ),
            allowMissingColumns=True,
        )
        .fillna(0)
    )
    sums = {
        "ut_impressions_28d": ("imps", 28),
        "pos_28d": ("pos", 28),
        "likes_28d": ("likes", 28),
        "clicks_28d": ("clicks", 28),
    }
    out = (
        _leaving(
            _windowed(
                daily, snaps, keys, sums, day_before=True, history=history, site="user_topic"
            ),
            lambda c: c("ut_impressions_28d") > 0,
        )
        .withColumn("ut_engagement_rate_28d", _rate("pos_28d", "ut_impressions_28d"))
        .withColumn("ut_like_rate_28d", _rate("likes_28d", "ut_impressions_28d"))
        .withColumn("ut_click_rate_28d", _rate("clicks_28d", "ut_impressions_28d"))
    )
    return _finish_daily(out, view)


def stream_counters(
    engagements: DataFrame,
    key: str,
    windows_s: Mapping[str, int],
    start: dt.date,
    end: dt.date,
    step_s: int = STREAM_STEP_S,
) -> DataFrame:
    """Intraday counters of positive engagements per ``key`` at every ``step_s`` step.

    A counter at step T counts engagements in [T - window, T). Rows are emitted at every
    step an engagement can influence, plus the first step after it has aged out, so an as-of
    lookup never carries a stale non-zero value. A step at which every counter is zero is a
    tombstone: all counters null (the entity has left the view; see the module docstring).
    Only steps T within [start 00:00, end+1 00:00) are returned.

    Returns:
        Columns ``key``, ``step_ts`` and one bigint per window name (null on tombstones).
    """
    longest = max(windows_s.values())
    lo, hi = lake.midnight(start), lake.midnight(end + dt.timedelta(days=1))
    micros = F.unix_micros("engaged_at")
    step_us = step_s * 1_000_000
    # First step strictly after the engagement, last step one past its longest window.
    first = ((F.floor(micros / step_us) + 1) * step_us).cast("bigint")
    last = (first + (longest // step_s) * step_us).cast("bigint")
    # Events up to one step older than the longest window still emit the zero row at ``lo``.
    reach = F.expr(f"INTERVAL {longest + step_s} SECONDS")
    events = (
        engagements.where(F.col("head").isin(*POSITIVE_HEADS))
        .where((F.col("engaged_at") >= F.lit(lo) - reach) & (F.col("engaged_at") < F.lit(hi)))
        .select(
            key,
            micros.alias("e_us"),
            F.explode(F.sequence(first, last, F.lit(step_us).cast("bigint"))).alias("t_us"),
        )
    )
    aggs = [
        F.sum(
            (
                (F.col("e_us") >= F.col("t_us") - w * 1_000_000) & (F.col("e_us") < F.col("t_us"))
            ).cast("int")
        )
        .cast("bigint")
        .alias(name)
        for name, w in windows_s.items()
    ]
    out = events.groupBy(key, "t_us").agg(*aggs)
    live = functools.reduce(operator.or_, [F.col(name) > 0 for name in windows_s])
    out = out.select(
        key,
        F.timestamp_micros("t_us").alias("step_ts"),
        *[F.when(live, F.col(name)).alias(name) for name in windows_s],
    )
    return out.where((F.col("step_ts") >= F.lit(lo)) & (F.col("step_ts") < F.lit(hi)))


def tweet_realtime(engagements: DataFrame, start: dt.date, end: dt.date) -> DataFrame:
    """The ``tweet_realtime`` view's offline history (what the stream job pushes online)."""
    counters = stream_counters(
        engagements,
        "tweet_id",
        {"tweet_engagements_30m": 1800, "tweet_engagements_1h": 3600},
        start,
        end,
    )
    counters = counters.withColumn("date", F.to_date("step_ts"))
    return _finish(counters, VIEWS["tweet_realtime"], F.col("step_ts"))


def user_realtime(engagements: DataFrame, start: dt.date, end: dt.date) -> DataFrame:
    """The ``user_realtime`` view's offline history."""
    counters = stream_counters(engagements, "user_id", {"user_engagements_1h": 3600}, start, end)
    counters = counters.withColumn("date", F.to_date("step_ts"))
    return _finish(counters, VIEWS["user_realtime"], F.col("step_ts"))


def build_features(
    spark: SparkSession,
    tables: Mapping[str, DataFrame],
    start: dt.date,
    end: dt.date,
    history: HistoryFold | None = None,
) -> dict[str, DataFrame]:
    """Every feature view for snapshot days [start, end] from the lake tables.

    Args:
        spark: the session (only used to build the snapshot-day frame).
        tables: lake DataFrames by name (users, tweets, follows, feed_requests,
            impressions, engagements) up to ``end``: the whole lake, or with ``history``
            the days after its carried summary (tweets: always all of them, the topic
            lookup needs every tweet).
        start: first snapshot day.
        end: last snapshot day.
        history: folds the days up to its cut into per-key totals (see
            :mod:`jobs.feature_history`); None: every key-day row is kept.

    Returns:
        View name -> DataFrame with the contract's columns plus ``date`` (the partition).
    """
    snaps = _snapshots(spark, lake.days_between(start, end))
    t = tables
    # Computed once (tiny: one row per snapshot) and shared by the three encodings.
    prior = global_rates(t["impressions"], t["engagements"], snaps, history).cache()
    tweets_in = t["tweets"].where(
        (F.to_date("created_at") >= F.lit(start)) & (F.to_date("created_at") <= F.lit(end))
    )
    return {
        "user_engagement_daily": user_engagement_daily(
            t["users"],
            t["follows"],
            t["feed_requests"],
            t["impressions"],
            t["engagements"],
            snaps,
            prior,
            history,
        ),
        "author_stats_daily": author_stats_daily(
            t["tweets"], t["follows"], t["impressions"], t["engagements"], snaps, prior, history
        ),
        "tweet_attributes": tweet_attributes(tweets_in),
        "tweet_authors": tweet_authors(tweets_in),
        "tweet_stats_daily": tweet_stats_daily(
            t["tweets"], t["impressions"], t["engagements"], snaps, history
        ),
        "user_author_affinity_daily": user_author_affinity_daily(
            t["follows"], t["impressions"], t["engagements"], snaps, prior, history
        ),
        "user_topic_affinity_daily": user_topic_affinity_daily(
            t["tweets"], t["impressions"], t["engagements"], snaps, history
        ),
        "tweet_realtime": tweet_realtime(t["engagements"], start, end),
        "user_realtime": user_realtime(t["engagements"], start, end),
    }


# Concurrent view writes in `run_features` (docs/performance.md, #23).
VIEW_WRITERS = 3

# The lake columns the views read, per table: only these are scanned and cached (a feed
# request's 200 candidate ids would otherwise be cached for every request of the lake's history).
FEATURE_INPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("user_id", "created_at"),
    "tweets": ("tweet_id", "author_id", "created_at", "topic", "has_media", "has_link", "length"),
    "follows": ("follower_id", "followee_id", "created_at"),
    "feed_requests": ("user_id", "requested_at"),
    "impressions": ("user_id", "tweet_id", "author_id", "served_at"),
    "engagements": ("user_id", "tweet_id", "author_id", "head", "engaged_at"),
}


def run_features(
    spark: SparkSession,
    settings: Settings,
    start: dt.date,
    end: dt.date,
    views: list[str] | None = None,
    reuse: bool = False,
) -> dict[str, list[Path]]:
    """Read the lake up to ``end`` and (re)write each view's partitions for [start, end].

    Target encodings and follow counts use all history. The days before the longest window
    of the first snapshot enter only as per-key totals: from the newest history summary that
    still matches the lake when there is one (then only the partitions after it are read),
    else from every partition (:mod:`jobs.feature_history`); the run then saves the summary
    at its own cut for the next one. Nothing after ``end`` is read, so a rerun after new
    data lands gives the same output.

    Every partition written is recorded with the digest of its inputs
    (:class:`jobs.feature_history.SnapshotRecord`). With ``reuse``, the days from ``start``
    whose partitions of every asked view still match their record are kept, and the run
    computes from the first day that does not (nothing at all when every day matches).

    Returns:
        View name -> its partition folders in [start, end] (written or kept).
    """
    lake.check_interval(start, end)
    names = list(views or VIEWS)
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise ValueError(f"unknown feature view {unknown[0]!r}")
    lake_root, features_root = settings.paths.lake, settings.paths.features
    code = code_digest()
    history_dir = settings.paths.feature_history
    record = SnapshotRecord.load(features_root, history_dir)
    inputs = SnapshotRecord.inputs(
        lake_root, FEATURE_INPUT_COLUMNS, lake.days_between(start, end), code
    )
    asked = start
    if reuse:
        stale = [d for d in inputs if not all(record.fresh(n, d, inputs[d]) for n in names)]
        if not stale:
            log.info("features %s..%s: every snapshot kept (same lake days, same code)", start, end)
            return {n: lake.existing_partitions(features_root, n, start, end) for n in names}
        start = stale[0]
        if start > asked:
            log.info("features %s..%s: snapshots before %s kept", asked, end, start)
    plan = plan_history(lake_root, history_dir, FEATURE_INPUT_COLUMNS, start, LOOKBACK_DAYS)
    parts = {
        name: lake.existing_partitions(
            lake_root, name, None if name == "tweets" else plan.read_from, end
        )
        for name in FEATURE_INPUT_COLUMNS
    }
    if not parts["impressions"]:
        raise FileNotFoundError(f"no impressions partitions up to {end} in {lake_root}")
    log.info(
        "features %s..%s: lake read from %s (history cut %s, summary carried: %s)",
        start,
        end,
        plan.read_from or "its first day",
        plan.cut,
        plan.carried or "none",
    )
    size_shuffle_partitions(spark, settings, [p for paths in parts.values() for p in paths])
    # Read once, reused by every view; only the columns the views use are cached.
    tables = {
        name: spark_io.read_partitions(spark, parts[name], lake.table_schema(name))
        .select(*columns)
        .cache()
        for name, columns in FEATURE_INPUT_COLUMNS.items()
    }
    # Nothing to fold (the lake starts after the cut) and no summary: the unfolded plan.
    before_cut = f"{lake.DATE_COLUMN}={plan.cut}"
    folds = plan.carried is not None or any(
        p.name <= before_cut for paths in parts.values() for p in paths
    )
    history = HistoryFold(spark, history_dir, plan) if folds else None
    frames = build_features(spark, tables, start, end, history)

    def write(name: str) -> list[Path]:
        log.info("writing %s for %s..%s", name, start, end)
        return spark_io.write_date_partitions(
            frames[name], settings.paths.features, name, lake.days_between(start, end)
        )

    # Views are written as concurrent Spark jobs: on small days each job is mostly driver
    # work (planning, commit) that leaves the executor threads idle; another job fills them.
    with ThreadPoolExecutor(max_workers=VIEW_WRITERS) as pool:
        written = dict(zip(names, pool.map(write, names), strict=True))
    for name in names:
        for day in lake.days_between(start, end):
            record.record(name, day, inputs[day])
    record.save()
    if history is not None:
        history.save()
    for frame in tables.values():
        frame.unpersist()
    if start == asked:
        return written
    return {n: lake.existing_partitions(features_root, n, asked, end) for n in names}
