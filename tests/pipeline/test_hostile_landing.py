"""Landing under hostile input on the real broker and the real Spark job.

A generated corpus of hostile records, interleaved with good events of every lake topic,
must land each good record exactly once and quarantine every hostile one with its reason and
offset; and a landing job killed after its first micro-batch must resume from its
checkpoint without losing or repeating a row.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from hostile_corpus import generate, hostile_records, template

from feedrank.config import Settings
from feedrank.schemas import TOPIC_EVENTS, Follow, encode
from jobs.land import LAKE_TOPICS, QUARANTINE, land

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
# The column that identifies a test's own good rows in each lake table.
ID_COLUMN = {
    "tweets": "tweet_id",
    "follows": "follower_id",
    "feed_requests": "request_id",
    "impressions": "tweet_id",
    "engagements": "request_id",
}


def _end_offsets(settings: Settings, topics: list[str]) -> dict[str, dict[int, int]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t)]
        ends = consumer.end_offsets(parts)
    finally:
        consumer.close(autocommit=False)
    out: dict[str, dict[int, int]] = {}
    for tp, offset in ends.items():
        out.setdefault(tp.topic, {})[tp.partition] = offset
    return out


def _rows(root: Path) -> list[dict]:
    if not root.is_dir():
        return []
    return pads.dataset(str(root), format="parquet", partitioning="hive").to_table().to_pylist()


def _good_id(topic: str, ident: int) -> object:
    row = TOPIC_EVENTS[topic].model_validate(template(topic, ident)).lake_rows()[0]
    return getattr(row, ID_COLUMN[topic])


def test_hostile_corpus_lands_every_good_record_once_and_quarantines_the_rest(
    spark, kafka: Settings, tmp_path: Path
) -> None:
    from kafka import KafkaProducer
    from pipeline_helpers import settings_at

    cfg = settings_at(kafka, tmp_path)
    topics = list(LAKE_TOPICS)
    start = _end_offsets(cfg, topics)
    base = random.randrange(10**9, 2 * 10**9)
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    good: dict[str, set] = {t: set() for t in topics}
    hostile: set[tuple[str, int, int]] = set()
    try:
        for t_index, topic in enumerate(topics):
            corpus = generate(hostile_records(topic), 40, run_seed=t_index)
            for i, (bad, key) in enumerate(corpus):
                ident = base + 1_000 * t_index + i
                producer.send(topic, encode_good(topic, ident), key=key)
                good[topic].add(_good_id(topic, ident))
                meta = producer.send(topic, bad, key=key).get(60)
                hostile.add((topic, meta.partition, meta.offset))
        producer.flush()
    finally:
        producer.close()

    checkpoint = cfg.paths.home / "checkpoint"
    land(spark, cfg, topics, checkpoint, starting_offsets=start)
    land(spark, cfg, topics, checkpoint)  # nothing new: nothing lands twice

    for topic in topics:
        landed = Counter(
            r[ID_COLUMN[topic]]
            for r in _rows(cfg.paths.lake / topic)
            if r[ID_COLUMN[topic]] in good[topic]
        )
        assert landed == Counter({g: 1 for g in good[topic]}), topic
    quarantined = Counter(
        (q["topic"], q["partition"], q["offset"])
        for topic in topics
        for q in _rows(cfg.paths.lake / QUARANTINE / topic)
    )
    assert quarantined == Counter({h: 1 for h in hostile})
    reasons = {q["reason"] for t in topics for q in _rows(cfg.paths.lake / QUARANTINE / t)}
    assert all(reasons) and any(r.startswith("too_deep") for r in reasons)


def encode_good(topic: str, ident: int) -> bytes:
    """The wire form of the test's good event ``ident`` of ``topic``."""
    return encode(TOPIC_EVENTS[topic].model_validate(template(topic, ident)))


def test_landing_killed_after_its_first_batch_resumes_without_loss_or_duplicates(
    spark, kafka: Settings, tmp_path: Path
) -> None:
    """SIGKILL ``feedrank land`` (and its JVM) once its first micro-batch is committed; a
    rerun on the same checkpoint lands every record exactly once."""
    import datetime as dt

    from kafka import KafkaProducer
    from pipeline_helpers import settings_at

    cfg = settings_at(kafka, tmp_path)
    base = random.randrange(3 * 10**9, 4 * 10**9)
    followers = list(range(base, base + 300))
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    at = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
    for i, follower in enumerate(followers):
        event = Follow(follower_id=follower, followee_id=7, created_at=at + dt.timedelta(seconds=i))
        producer.send("follows", encode(event))
        if i % 50 == 0:
            producer.send("follows", b"[" * 300_000)  # the message, now and then
    producer.flush()
    producer.close()

    checkpoint = cfg.paths.home / "checkpoints" / "land"
    env = {**os.environ, "FEEDRANK_PATHS__HOME": str(cfg.paths.home)}
    exe = Path(sys.executable).with_name("feedrank")
    job = subprocess.Popen(
        [str(exe), "land", "--topic", "follows", "--batch-records", "200"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes the JVM with it
    )
    try:
        deadline = time.monotonic() + 240
        while not (checkpoint / "commits" / "0").exists():
            assert job.poll() is None, f"feedrank land exited early ({job.returncode})"
            assert time.monotonic() < deadline, "no micro-batch committed in 240 s"
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL
    ours = set(followers)
    before = sum(1 for r in _rows(cfg.paths.lake / "follows") if r["follower_id"] in ours)
    assert before < len(followers), "the job was killed before it landed everything"

    land(spark, cfg, ["follows"], checkpoint, batch_records=200)
    landed = Counter(
        r["follower_id"] for r in _rows(cfg.paths.lake / "follows") if r["follower_id"] in ours
    )
    assert landed == Counter({f: 1 for f in followers})
