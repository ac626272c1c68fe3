"""The other readers of ranked_feeds under hostile input, on the real broker: the demo's
feed reader and the closed-loop simulator. Each good feed is read once, each hostile record
goes to ranked_feeds.dlq with its offset, and neither reader stops."""

from __future__ import annotations

from collections import Counter

import pytest
from hostile_corpus import generate, hostile_records, template
from serving_helpers import TopicReader

from feedrank.config import Settings
from feedrank.schemas import DeadLetter, RankedFeed, encode

pytestmark = pytest.mark.integration


def _produce_corpus(settings: Settings, n: int, run_seed: int) -> tuple[set[str], set]:
    """Good feeds (request ids) and hostile records ((partition, offset)), interleaved."""
    import uuid

    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    good, hostile = set(), set()
    tag = uuid.uuid4().int % 10**9
    try:
        for i, (value, key) in enumerate(generate(hostile_records("ranked_feeds"), n, run_seed)):
            feed = RankedFeed.model_validate(template("ranked_feeds", tag * 1000 + i))
            producer.send("ranked_feeds", encode(feed), key=b"5")
            good.add(feed.request_id)
            meta = producer.send("ranked_feeds", value, key=key).get(60)
            hostile.add((meta.partition, meta.offset))
        producer.flush()
    finally:
        producer.close()
    return good, hostile


def _letters(dlq: TopicReader, n: int) -> Counter:
    letters = [DeadLetter.model_validate_json(v) for v in dlq.read(n, 60)]
    assert all(d.source == "ranked_feeds" and d.reason for d in letters)
    return Counter((d.partition, d.offset) for d in letters)


def test_demo_feed_reader_reads_good_feeds_and_dead_letters_the_rest(kafka: Settings) -> None:
    from feedrank.demo import _end_offsets, _read_feeds

    consumer, start = _end_offsets(kafka, "ranked_feeds")
    dlq = TopicReader(kafka, "ranked_feeds.dlq")
    try:
        good, hostile = _produce_corpus(kafka, 40, run_seed=21)
        feeds = _read_feeds(kafka, start, consumer)
        letters = _letters(dlq, len(hostile))
    finally:
        dlq.close()
    assert Counter(f.request_id for f in feeds) == Counter(dict.fromkeys(good, 1))
    assert letters == Counter(dict.fromkeys(hostile, 1))


def test_closed_loop_simulator_reads_good_feeds_and_dead_letters_the_rest(
    kafka: Settings,
) -> None:
    import time

    from feedrank.simulator.live import LiveSimulator

    sim = LiveSimulator(kafka, users=50, closed_loop=True)
    dlq = TopicReader(kafka, "ranked_feeds.dlq")
    try:
        good, hostile = _produce_corpus(kafka, 40, run_seed=22)
        for request_id in good:  # the feeds answer requests of this run
            sim.pending[request_id] = (5, int(time.time() * 1e6), 0)
        deadline = time.monotonic() + 60
        while sim.stats.feeds_received + sim.stats.feeds_dead_lettered < len(good) + len(hostile):
            assert time.monotonic() < deadline, sim.stats
            sim.read_feeds()
        sim.producer.flush()
        letters = _letters(dlq, len(hostile))
    finally:
        sim.close()
        dlq.close()
    assert sim.stats.feeds_received == len(good) and not sim.pending
    assert sim.stats.feeds_dead_lettered == len(hostile)
    assert letters == Counter(dict.fromkeys(hostile, 1))
