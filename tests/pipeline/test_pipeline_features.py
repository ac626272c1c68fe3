"""Feature tables: the contract's columns and dtypes, snapshot timing, values vs plain Python."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict

import pyarrow.parquet as pq
import pytest
from pipeline_helpers import END, FEATURE_START, read_rows

from feedrank import lake
from feedrank.config import HEADS, POSITIVE_HEADS
from feedrank.feature_spec import TARGET_ENCODING_SMOOTHING, VIEWS
from jobs.features import STREAM_STEP_S

# Spark on a shared 2-core machine: the session-wide pipeline build needs headroom.
pytestmark = pytest.mark.timeout(900)


def _view_rows(cfg, name: str) -> list[dict]:
    return read_rows(cfg.paths.features / name)


@pytest.mark.integration
def test_every_view_has_exactly_the_contract_columns_and_dtypes(pipeline_run):
    for name in VIEWS:
        files = sorted((pipeline_run.settings.paths.features / name).glob("date=*/*.parquet"))
        assert files, name
        expected = lake.feature_table_schema(name)
        for file in files:
            schema = pq.read_schema(file)
            assert schema.names == expected.names, name
            assert schema.types == expected.types, name


@pytest.mark.integration
def test_snapshot_timestamps(pipeline_run):
    cfg = pipeline_run.settings
    for name, view in VIEWS.items():
        rows = _view_rows(cfg, name)
        assert rows, name
        for row in rows[:500]:
            day = (
                row["date"]
                if isinstance(row["date"], dt.date)
                else dt.date.fromisoformat(str(row["date"]))
            )
            ts = row["event_timestamp"]
            assert row["created_timestamp"] == ts
            if view.kind == "daily":
                assert ts == lake.midnight(day + dt.timedelta(days=1)), name
            elif view.kind == "stream":
                assert ts.date() == day and ts.timestamp() % STREAM_STEP_S == 0, name
    created = {t["tweet_id"]: t["created_at"] for t in pipeline_run.world["tweets"]}
    for row in _view_rows(cfg, "tweet_attributes"):
        assert row["event_timestamp"] == created[row["tweet_id"]]
        assert row["tweet_created_ts"] == created[row["tweet_id"]].timestamp()


@pytest.mark.integration
def test_user_daily_values_match_plain_python(pipeline_run):
    """Windows end strictly before the cutoff; encodings use only earlier labels."""
    world, cfg = pipeline_run.world, pipeline_run.settings
    snap = END - dt.timedelta(days=1)
    cutoff = lake.midnight(snap + dt.timedelta(days=1))
    rows = {
        r["user_id"]: r
        for r in _view_rows(cfg, "user_engagement_daily")
        if r["event_timestamp"] == cutoff
    }
    imps = [i for i in world["impressions"] if i["served_at"] < cutoff]
    engs = [e for e in world["engagements"] if e["engaged_at"] < cutoff]
    prior = {h: sum(e["head"] == h for e in engs) / len(imps) for h in HEADS}
    m = TARGET_ENCODING_SMOOTHING
    checked = 0
    for user, row in rows.items():
        mine = [i for i in imps if i["user_id"] == user]
        mine_e = [e for e in engs if e["user_id"] == user]
        week = cutoff - dt.timedelta(days=7)
        n7 = sum(i["served_at"] >= week for i in mine)
        likes7 = sum(e["head"] == "like" and e["engaged_at"] >= week for e in mine_e)
        assert row["user_impressions_7d"] == n7
        assert row["user_impressions_1d"] == sum(
            i["served_at"] >= cutoff - dt.timedelta(days=1) for i in mine
        )
        assert row["user_like_rate_7d"] == (likes7 / n7 if n7 else None)
        te = (sum(e["head"] == "like" for e in mine_e) + m * prior["like"]) / (len(mine) + m)
        assert row["user_te_like"] == pytest.approx(te, rel=1e-12)
        hours = Counter(
            r["requested_at"].hour
            for r in world["feed_requests"]
            if r["user_id"] == user and week - dt.timedelta(days=21) <= r["requested_at"] < cutoff
        )
        best = max(hours.values(), default=0)
        assert row["user_active_hour_peak"] == (
            min(h for h, n in hours.items() if n == best) if hours else -1
        )
        assert row["user_following_count"] == sum(
            f["follower_id"] == user and f["created_at"] < cutoff for f in world["follows"]
        )
        checked += 1
    assert checked >= 10


@pytest.mark.integration
def test_tweet_realtime_counters_match_plain_python(pipeline_run):
    """Counter at step T = positive engagements in [T - window, T); a tombstone (all null)
    closes each burst at the step where every counter is back to zero."""
    world, cfg = pipeline_run.world, pipeline_run.settings
    positives = [e for e in world["engagements"] if e["head"] in POSITIVE_HEADS]
    engaged_at = defaultdict(list)
    for e in positives:
        engaged_at[e["tweet_id"]].append(e["engaged_at"])
    rows = _view_rows(cfg, "tweet_realtime")
    tombstones = 0
    for row in rows:
        at = row["event_timestamp"]
        mine = engaged_at[row["tweet_id"]]
        n30 = sum(at - dt.timedelta(minutes=30) <= e < at for e in mine)
        n60 = sum(at - dt.timedelta(hours=1) <= e < at for e in mine)
        expected = (n30, n60) if n60 else (None, None)
        assert (row["tweet_engagements_30m"], row["tweet_engagements_1h"]) == expected
        tombstones += n60 == 0
    assert 0 < tombstones < len(rows)
    assert any(r["tweet_engagements_30m"] == 0 for r in rows)  # 0 only beside a live hour
    # Every step with a non-zero count in the covered days has a row.
    lo = lake.midnight(FEATURE_START)
    hi = lake.midnight(END + dt.timedelta(days=1))
    have = {(r["tweet_id"], r["event_timestamp"]) for r in rows}
    for e in positives:
        step = dt.datetime.fromtimestamp(
            (e["engaged_at"].timestamp() // STREAM_STEP_S + 1) * STREAM_STEP_S, dt.UTC
        )
        if lo <= step < hi:
            assert (e["tweet_id"], step) in have
