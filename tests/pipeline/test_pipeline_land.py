"""Landing from a real Kafka broker: quarantine with reasons; restarts lose and repeat nothing."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

import pyarrow.dataset as pads
import pytest

from feedrank import lake
from feedrank.exporter import read_outcomes
from feedrank.schemas import Follow, Impression, ServedImpressions, encode
from jobs import spark_io
from jobs.land import QUARANTINE, decode_records, land, write_batch

# Spark on a shared 2-core machine: streaming start-up needs headroom.
pytestmark = pytest.mark.timeout(900)


class WriterCrash(RuntimeError):
    pass


def _produce(settings, followers: list[int], bad: list[bytes] = ()) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    at = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
    for i, follower in enumerate(followers):
        event = Follow(follower_id=follower, followee_id=7, created_at=at + dt.timedelta(hours=i))
        producer.send("follows", encode(event))
    for payload in bad:
        producer.send("follows", payload)
    producer.flush()
    producer.close()


def _landed(root, ids: set[int]) -> Counter:
    table = pads.dataset(str(root / "follows"), format="parquet", partitioning="hive").to_table()
    return Counter(f for f in table.column("follower_id").to_pylist() if f in ids)


@pytest.mark.integration
def test_landing_restarts_without_duplicates_or_gaps(spark, kafka, tmp_path, monkeypatch):
    from pipeline_helpers import settings_at

    cfg = settings_at(kafka, tmp_path)
    checkpoint = tmp_path / "checkpoint"
    base = random.randrange(10**9, 2 * 10**9)  # ours, whatever else the topic holds
    first, second = list(range(base, base + 30)), list(range(base + 30, base + 50))
    bad = [b"not json", b'{"schema_version": 1, "follower_id": -5}']
    _produce(cfg, first, bad)
    lag = dt.timedelta(seconds=cfg.clock.max_event_lag_s)
    before = dt.datetime.now(dt.UTC)
    land(spark, cfg, ["follows"], checkpoint)
    assert _landed(cfg.paths.lake, set(first)) == Counter({f: 1 for f in first})
    # The table is marked complete up to the run's start, less the events' allowed lag.
    marked = lake.landed_through(cfg.paths.lake, "follows")
    assert before - lag <= marked <= dt.datetime.now(dt.UTC) - lag
    quarantined = (
        pads.dataset(
            str(cfg.paths.lake / QUARANTINE / "follows"), format="parquet", partitioning="hive"
        )
        .to_table()
        .to_pylist()
    )
    reasons = {q["payload"]: q["reason"] for q in quarantined}
    assert "not JSON" in reasons["not json"]
    assert "follower_id" in reasons['{"schema_version": 1, "follower_id": -5}']

    # Crash mid-batch: the table's files are published, then the job dies before the
    # quarantine is written and the offsets are committed. The replay must overwrite.
    _produce(cfg, second)
    real = spark_io.write_spark_parquet
    calls = []

    def dying(df, path, partition_by=None):
        real(df, path, partition_by)
        calls.append(path)
        if len(calls) == 2:
            raise WriterCrash("killed mid-batch")

    monkeypatch.setattr(spark_io, "write_spark_parquet", dying)
    with pytest.raises(Exception):  # noqa: B017 - Spark wraps the callback's error
        land(spark, cfg, ["follows"], checkpoint)
    monkeypatch.setattr(spark_io, "write_spark_parquet", real)
    assert lake.landed_through(cfg.paths.lake, "follows") == marked  # a failed run marks nothing

    land(spark, cfg, ["follows"], checkpoint)
    assert lake.landed_through(cfg.paths.lake, "follows") > marked
    everyone = set(first) | set(second)
    assert _landed(cfg.paths.lake, everyone) == Counter({f: 1 for f in everyone})
    # Event-date partitions: hourly follows from 2026-11-02 12:00 (30 h, then 20 h) span two.
    assert [p.name for p in lake.existing_partitions(cfg.paths.lake, "follows")] == [
        "date=2026-11-02",
        "date=2026-11-03",
    ]
    # Nothing new: a further run lands nothing twice.
    land(spark, cfg, ["follows"], checkpoint)
    assert _landed(cfg.paths.lake, everyone) == Counter({f: 1 for f in everyone})
    # The landing outcomes Prometheus scrapes (feedrank batch-metrics): the crashed batch's
    # records are counted once, by the replay that published them.
    outcomes = read_outcomes(cfg)
    [[labels, landed]] = outcomes["feedrank_landing_records_total"]["samples"]
    assert labels == {"topic": "follows"} and landed >= len(everyone)
    [[_, quarantined]] = outcomes["feedrank_landing_quarantined_records_total"]["samples"]
    assert quarantined >= len(bad)
    assert outcomes["feedrank_landing_last_run_timestamp_seconds"]["samples"][0][1] > 1.7e9


@pytest.mark.integration
def test_a_served_feed_lands_as_one_row_per_impression(spark, settings, tmp_path):
    """Serving logs a feed's impressions as one message; the lake gets one row for each."""
    from pipeline_helpers import read_rows, settings_at

    cfg = settings_at(settings, tmp_path)
    at = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
    served = [
        Impression(
            request_id="req-1",
            user_id=3,
            tweet_id=100 + i,
            author_id=9,
            position=i,
            served_at=at,
            model_version="v1",
            score=1.0 - i / 10,
            features=[0.5, None, float(i)],
        )
        for i in range(3)
    ]
    empty = b'{"schema_version": 1, "impressions": []}'
    records = spark.createDataFrame(
        [
            ("impressions", 0, 10, bytearray(encode(ServedImpressions(impressions=served)))),
            ("impressions", 0, 11, bytearray(empty)),
        ],
        "topic string, partition int, offset long, value binary",
    )
    write_batch(decode_records(records), 0, cfg, ["impressions"], at.date())

    rows = sorted(read_rows(cfg.paths.lake / "impressions"), key=lambda r: r["position"])
    assert [r.pop(lake.DATE_COLUMN) for r in rows] == ["2026-11-02"] * 3
    assert [Impression.model_validate(r) for r in rows] == served
    (bad,) = read_rows(cfg.paths.lake / QUARANTINE / "impressions")
    assert bad["offset"] == 11 and bad["reason"].startswith("impressions:")
