"""The Kafka loop on the real broker: end to end, degraded answers, DLQ, reload, rebalance."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import uuid
from collections import Counter

import numpy as np
import pytest
from kafka.errors import KafkaTimeoutError
from kafka.future import Future
from prometheus_client import REGISTRY
from serving_helpers import (
    TopicReader,
    fresh_group,
    make_request,
    request_ids_of,
    send_in_bursts,
    send_requests,
    train_throwaway_model,
)

from feedrank import ranking
from feedrank.config import Settings
from feedrank.model_files import load_model
from feedrank.schemas import (
    SCHEMA_VERSION,
    RankedFeed,
    RankedItem,
    ServedImpressions,
    decode_record,
    encode,
)
from feedrank.tracking import set_champion
from serving.consumer import ServingStats, _ServingLoop, run_serving
from serving.feed_cache import open_feed_cache
from serving.scorer import FALLBACK_VERSION, ModelSlot, Scorer

pytestmark = pytest.mark.integration


class ServingThread:
    """``run_serving`` on a thread, stopped (and joined) by :meth:`stop`."""

    def __init__(self, settings: Settings, scorer: Scorer) -> None:
        self.stop_event = threading.Event()
        self.stats: ServingStats | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(settings, scorer), daemon=True)
        self.thread.start()

    def _run(self, settings: Settings, scorer: Scorer) -> None:
        try:
            self.stats = run_serving(settings, stop_event=self.stop_event, scorer=scorer)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self) -> ServingStats:
        self.stop_event.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "serving loop did not stop"
        assert self.error is None, f"serving loop crashed: {self.error!r}"
        assert self.stats is not None
        return self.stats


@pytest.fixture
def group_settings(kafka: Settings, serve_settings: Settings, champion: str) -> Settings:
    """Serving settings with the session broker and a fresh consumer group at the end."""
    settings = serve_settings.model_copy(update={"kafka": kafka.kafka})
    return fresh_group(settings)


def make_scorer(settings: Settings, hydrator_factory, version: str = "serve-v1", **kw) -> Scorer:
    return Scorer(
        settings,
        ModelSlot(load_model(version, settings)),
        hydrator_factory(settings),
        open_feed_cache(settings),
        **kw,
    )


def feeds_by_id(values: list[bytes]) -> dict[str, list[RankedFeed]]:
    out: dict[str, list[RankedFeed]] = {}
    for value in values:
        feed = RankedFeed.model_validate_json(value)
        out.setdefault(feed.request_id, []).append(feed)
    return out


def warm_up(settings: Settings, producer, reader: TopicReader) -> None:
    """One request answered end to end: the consumer has joined and is assigned."""
    request = make_request(999_999, [1])
    send_requests(producer, [request])
    got = reader.read(1, 90, accept=lambda v: request.request_id.encode() in v)
    assert got, "the consumer never answered the warm-up request"


def read_answers(reader: TopicReader, ids: set[str], timeout_s: float) -> list[bytes]:
    """The ranked feeds answering ``ids``, one per request id, read within ``timeout_s``."""
    return reader.read(
        len(ids),
        timeout_s,
        accept=lambda v: json.loads(v)["request_id"] in ids,
        key=lambda v: json.loads(v)["request_id"],
    )


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_end_to_end_order_equals_offline_scoring(group_settings, producer, hydrator_factory):
    settings = group_settings
    feeds_reader = TopicReader(settings, "ranked_feeds")
    imps_reader = TopicReader(settings, "impressions")
    scorer = make_scorer(settings, hydrator_factory)
    server = ServingThread(settings, scorer)
    acks_before = _sample("feedrank_serving_wait_seconds_count", phase="ack")
    try:
        warm_up(settings, producer, feeds_reader)
        requests = []
        for i in range(12):
            requests.append(make_request(1 + i % 5, range(20 * i, 20 * i + 20)))
            send_requests(producer, requests[-1:])
            time.sleep(0.05)
        ids = {r.request_id for r in requests}
        feeds = feeds_by_id(
            feeds_reader.read(len(ids), 60, accept=lambda v: json.loads(v)["request_id"] in ids)
        )
        # One impressions message per served feed, each holding the feed's rows.
        imps = [
            imp
            for v in imps_reader.read(
                len(ids), 60, accept=lambda v: json.loads(v)["impressions"][0]["request_id"] in ids
            )
            for imp in json.loads(v)["impressions"]
        ]
        # Readiness on /metrics: the only member owns every partition.
        owned = REGISTRY.get_sample_value("feedrank_serving_assigned_partitions")
        assert owned == settings.kafka.topics["feed_requests"].partitions
    finally:
        stats = server.stop()
        feeds_reader.close()
        imps_reader.close()
    assert set(feeds) == ids
    assert stats.dead_lettered == 0
    # Each feed says where its time went before scoring (how long is for `make bench`).
    for (feed,) in feeds.values():
        waits = [feed.timings_ms[phase] for phase in ("backlog", "fetch", "queued")]
        assert min(waits) >= 0.0
    # Every feed's acknowledgement was timed, and the collector's pauses are observed.
    assert _sample("feedrank_serving_wait_seconds_count", phase="ack") - acks_before >= len(ids)
    assert _sample("feedrank_serving_gc_pause_seconds_count", generation="0") > 0
    model = load_model("serve-v1", settings)
    heavy_answers = 0
    for request in requests:
        (feed,) = feeds[request.request_id]
        assert feed.model_version in ("serve-v1", FALLBACK_VERSION)
        assert feed.user_id == request.user_id
        assert len(feed.items) == 20  # fewer candidates than top_k: every one is served
        rows = sorted(
            (i for i in imps if i["request_id"] == request.request_id),
            key=lambda i: i["position"],
        )
        assert [r["tweet_id"] for r in rows] == [item.tweet_id for item in feed.items]
        if feed.model_version == FALLBACK_VERSION:  # late on arrival: candidate order
            assert [i.tweet_id for i in feed.items] == request.candidate_tweet_ids
            continue
        # Offline: score the exact logged feature values with the same model and rank them.
        X = np.array(
            [[np.nan if v is None else v for v in r["features"]] for r in rows], dtype=np.float64
        )
        assert not np.isnan(X).all(axis=0).all()  # real values came from the Feast store
        authors = np.array([r["author_id"] for r in rows])
        if feed.degraded:
            scores = model.light_scores(X)
        else:
            heavy_answers += 1
            scores = ranking.weighted_score(model.predict_heads(X), settings.ranking.weights)
        order, final = ranking.rank(scores, authors, settings.ranking.author_diversity_floor)
        assert list(order) == list(range(len(rows))), f"order differs for {request.request_id}"
        assert np.allclose(final, [item.score for item in feed.items])
    assert heavy_answers > 0


def test_slowed_heavy_stage_answers_degraded_within_deadline(
    group_settings, producer, hydrator_factory
):
    settings = group_settings
    reader = TopicReader(settings, "ranked_feeds")
    # The heavy stage takes 2 s here: longer than the whole 300-400 ms budget.
    scorer = make_scorer(settings, hydrator_factory, stage_delays_ms={"heavy": 2000})
    server = ServingThread(settings, scorer)
    try:
        warm_up(settings, producer, reader)
        requests = []
        for i in range(5):
            # Made just before it is sent: requested_at starts the request's budget.
            requests.append(make_request(50 + i, range(300 + 10 * i, 310 + 10 * i)))
            send_requests(producer, requests[-1:])
            time.sleep(0.1)
        ids = {r.request_id for r in requests}
        feeds = feeds_by_id(
            reader.read(len(ids), 60, accept=lambda v: json.loads(v)["request_id"] in ids)
        )
    finally:
        server.stop()
        reader.close()
    assert set(feeds) == ids
    for (feed,) in feeds.values():
        assert feed.degraded
        assert not feed.deadline_missed and feed.served_at <= feed.deadline_at
        assert len(feed.items) == 10


def _malformed(i: int, max_bytes: int) -> bytes | None:
    """The i-th malformed feed request; kinds cycle so every kind appears many times."""
    good = json.loads(make_request(1, [1, 2]).model_dump_json())
    kinds = [
        lambda: b"\xff\xfe not json at all",
        lambda: b"{truncated",
        lambda: None,  # a tombstone
        lambda: b"",
        lambda: b"[1, 2, 3]",
        lambda: b"42",
        lambda: json.dumps({k: v for k, v in good.items() if k != "schema_version"}).encode(),
        lambda: json.dumps({**good, "schema_version": 99}).encode(),
        lambda: json.dumps({k: v for k, v in good.items() if k != "user_id"}).encode(),
        lambda: json.dumps({**good, "user_id": -5}).encode(),
        lambda: json.dumps({**good, "user_id": "alice"}).encode(),
        lambda: json.dumps({**good, "candidate_tweet_ids": []}).encode(),
        lambda: json.dumps({**good, "candidate_tweet_ids": list(range(5001))}).encode(),
        lambda: json.dumps({**good, "device": "toaster"}).encode(),
        lambda: json.dumps({**good, "requested_at": "2026-11-29T01:00:00"}).encode(),
        lambda: json.dumps({**good, "requested_at": "yesterday"}).encode(),
        lambda: json.dumps({**good, "request_id": ""}).encode(),
        lambda: json.dumps({**good, "request_id": "x" * 65}).encode(),
        lambda: json.dumps({**good, "schema_version": "1"}).encode(),
        lambda: json.dumps({**good, "candidate_tweet_ids": [1, "two"]}).encode(),
        lambda: json.dumps({**good, "pad": "x" * (max_bytes + 10)}).encode(),  # oversized
        lambda: b"\x00" * 64,
    ]
    return kinds[i % len(kinds)]()


def test_malformed_messages_all_dead_lettered_and_lag_returns_to_zero(
    group_settings, producer, hydrator_factory
):
    from kafka import KafkaConsumer, TopicPartition

    settings = group_settings
    dlq = TopicReader(settings, "feed_requests.dlq")
    feeds_reader = TopicReader(settings, "ranked_feeds")
    server = ServingThread(settings, make_scorer(settings, hydrator_factory))
    max_bytes = settings.serving.max_request_bytes
    try:
        for i in range(1000):
            producer.send("feed_requests", key=str(i).encode(), value=_malformed(i, max_bytes))
        producer.flush(timeout=60)
        letters = [json.loads(v) for v in dlq.read(1000, 120)]
        # The consumer is still alive and answers a valid request after all that.
        after = make_request(77, [5, 6, 7])
        send_requests(producer, [after])
        answered = feeds_reader.read(1, 60, accept=lambda v: after.request_id.encode() in v)
        stats = server.stop()
    finally:
        server.stop_event.set()
        dlq.close()
        feeds_reader.close()
    assert len(letters) == 1000 and stats.dead_lettered == 1000
    assert all(letter["source"] == "feed_requests" and letter["reason"] for letter in letters)
    reasons = Counter(letter["reason"].split(":")[0] for letter in letters)
    assert len(reasons) >= 8, reasons
    assert any(r.startswith("oversized") for r in reasons)
    assert answered
    # Lag back to 0: the group's committed offsets reached the end of every partition.
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=settings.serving.group_id,
        enable_auto_commit=False,
    )
    try:
        partitions = [TopicPartition("feed_requests", p) for p in range(3)]
        ends = consumer.end_offsets(partitions)
        assert all(consumer.committed(tp) == ends[tp] for tp in partitions)
    finally:
        consumer.close(autocommit=False)


def test_schema_evolution_on_the_broker(group_settings, producer, hydrator_factory):
    """New producer → this reader: a request with unknown optional fields is answered and
    the fields counted; a request of an unknown major schema_version is dead-lettered with
    that reason; every answer (feed and impressions) carries schema_version."""
    settings = group_settings
    feeds_reader = TopicReader(settings, "ranked_feeds")
    imps_reader = TopicReader(settings, "impressions")
    dlq = TopicReader(settings, "feed_requests.dlq")
    server = ServingThread(settings, make_scorer(settings, hydrator_factory))
    counted = {"topic": "feed_requests"}
    before = REGISTRY.get_sample_value("feedrank_serving_unknown_fields_total", counted) or 0
    newer = make_request(12, range(40, 60))
    breaking = make_request(13, range(40, 60))
    try:
        warm_up(settings, producer, feeds_reader)
        wire = json.loads(newer.model_dump_json())
        wire.update(client_build="2026.12.1", locale={"lang": "en"})
        producer.send("feed_requests", key=b"12", value=json.dumps(wire).encode())
        wire = {**json.loads(breaking.model_dump_json()), "schema_version": 2}
        producer.send("feed_requests", key=b"13", value=json.dumps(wire).encode())
        producer.flush(timeout=30)
        feeds = feeds_reader.read(1, 60, accept=lambda v: newer.request_id.encode() in v)
        imps = imps_reader.read(1, 60, accept=lambda v: newer.request_id.encode() in v)
        letters = [
            json.loads(v)
            for v in dlq.read(1, 60, accept=lambda v: breaking.request_id.encode() in v)
        ]
        after = REGISTRY.get_sample_value("feedrank_serving_unknown_fields_total", counted)
        stats = server.stop()
    finally:
        server.stop_event.set()
        for reader in (feeds_reader, imps_reader, dlq):
            reader.close()
    assert len(feeds) == 1 and len(imps) == 1
    assert after - before == 2  # client_build and locale, once each
    assert stats.dead_lettered == 1
    (letter,) = letters
    assert letter["kind"] == "schema_version" and letter["source"] == "feed_requests"
    assert "unknown major schema_version 2" in letter["reason"]
    feed, served = json.loads(feeds[0]), json.loads(imps[0])
    assert feed["schema_version"] == served["schema_version"] == SCHEMA_VERSION
    assert all(i["schema_version"] == SCHEMA_VERSION for i in served["impressions"])
    assert all(b"client_build" not in v for v in feeds + imps)


def test_an_older_producers_messages_get_defaults_from_the_broker(kafka: Settings, producer):
    """Old producer → this reader: ranked feeds and impressions written before the optional
    fields (arm, timings_ms, deadline_missed; an impression's arm, score, features) existed
    are read from the broker with those fields' defaults."""
    from kafka import KafkaConsumer, TopicPartition

    template_feed = json.loads(
        encode(
            RankedFeed(
                request_id=f"old-{uuid.uuid4().hex}",
                user_id=3,
                model_version="v0",
                degraded=False,
                items=[RankedItem(tweet_id=1, author_id=2, score=0.5, position=0)],
                requested_at=dt.datetime.now(dt.UTC),
                served_at=dt.datetime.now(dt.UTC),
                deadline_at=dt.datetime.now(dt.UTC),
            )
        )
    )
    old_feed = {
        k: v for k, v in template_feed.items() if k not in ("arm", "timings_ms", "deadline_missed")
    }
    old_impression = {
        "schema_version": 1,
        "request_id": old_feed["request_id"],
        "user_id": 3,
        "tweet_id": 1,
        "author_id": 2,
        "position": 0,
        "served_at": old_feed["served_at"],
        "model_version": "v0",
    }
    sent = {
        "ranked_feeds": json.dumps(old_feed).encode(),
        "impressions": json.dumps({"schema_version": 1, "impressions": [old_impression]}).encode(),
    }
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.kafka.bootstrap_servers, enable_auto_commit=False
    )
    try:
        parts = [
            TopicPartition(topic, p) for topic in sent for p in consumer.partitions_for_topic(topic)
        ]
        ends = consumer.end_offsets(parts)
        consumer.assign(parts)
        for tp, offset in ends.items():
            consumer.seek(tp, offset)
        for topic, value in sent.items():
            producer.send(topic, key=b"3", value=value)
        producer.flush(timeout=30)
        decoded: dict[str, object] = {}
        deadline = time.monotonic() + 60
        while len(decoded) < len(sent) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                for record in records:
                    if old_feed["request_id"].encode() in record.value:
                        decoded[tp.topic] = decode_record(tp.topic, record)
    finally:
        consumer.close(autocommit=False)
    feed, served = decoded["ranked_feeds"], decoded["impressions"]
    assert isinstance(feed, RankedFeed) and isinstance(served, ServedImpressions)
    assert (feed.arm, feed.timings_ms, feed.deadline_missed) == ("treatment", {}, False)
    (impression,) = served.impressions
    assert (impression.arm, impression.score, impression.features) == ("control", None, None)


def _corrupt_model(settings: Settings, version: str) -> str:
    train_throwaway_model(settings, seed=5, version=version)
    booster = settings.paths.models / version / "like.ubj"
    data = bytearray(booster.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    booster.write_bytes(bytes(data))
    return version


def test_hot_reload_under_load_refuses_corrupted_model(group_settings, producer, hydrator_factory):
    settings = group_settings
    reader = TopicReader(settings, "ranked_feeds")
    dlq = TopicReader(settings, "feed_requests.dlq")
    refused_before = (
        REGISTRY.get_sample_value("feedrank_serving_model_reloads_total", {"outcome": "refused"})
        or 0.0
    )
    scorer = make_scorer(settings, hydrator_factory)
    server = ServingThread(settings, scorer)
    bad = _corrupt_model(settings, f"serve-bad-{uuid.uuid4().hex[:6]}")
    good = train_throwaway_model(settings, seed=9, version=f"serve-v2-{uuid.uuid4().hex[:6]}")
    requests = []
    try:
        warm_up(settings, producer, reader)
        for i in range(150):
            if i == 40:
                set_champion(settings, bad)
            if i == 90:
                set_champion(settings, good)
            request = make_request(100 + i % 30, range(400 + 5 * i, 405 + 5 * i))
            requests.append(request)
            send_requests(producer, [request])
            time.sleep(0.03)
        ids = {r.request_id for r in requests}
        # Let the watcher see the good model before the last requests.
        time.sleep(1.5)
        tail = [make_request(150 + i, range(1200 + 5 * i, 1205 + 5 * i)) for i in range(10)]
        send_requests(producer, tail)
        ids |= {r.request_id for r in tail}
        feeds = feeds_by_id(
            reader.read(len(ids), 90, accept=lambda v: json.loads(v)["request_id"] in ids)
        )
        stats = server.stop()
        letters = dlq.read(1, 1)
    finally:
        server.stop_event.set()
        set_champion(settings, "serve-v1")
        reader.close()
        dlq.close()
    assert set(feeds) == ids, "every request answered"
    assert stats.dead_lettered == 0 and not letters
    # In serving order (partitions interleave, so not necessarily the order sent).
    served = sorted((c for copies in feeds.values() for c in copies), key=lambda f: f.served_at)
    # Requests already late on arrival (a slow moment of the machine) get the model-free
    # fallback; they are answered, so they count as served, not failed.
    versions = [f.model_version for f in served if f.model_version != FALLBACK_VERSION]
    assert set(versions) == {"serve-v1", good}
    assert bad not in versions
    # Swapped once, between requests: never back to the old model afterwards.
    first_new = versions.index(good)
    assert all(v == good for v in versions[first_new:])
    refused_after = REGISTRY.get_sample_value(
        "feedrank_serving_model_reloads_total", {"outcome": "refused"}
    )
    assert refused_after == refused_before + 1
    # The watcher loads with the serving thread count, not training's.
    assert scorer.models.current.version == good
    threads = {
        json.loads(b.save_config())["learner"]["generic_param"]["nthread"]
        for b in scorer.models.current.boosters.values()
    }
    assert threads == {str(settings.serving.model_nthread)}


def test_two_consumers_and_rebalances_lose_nothing(group_settings, producer, hydrator_factory):
    settings = group_settings
    reader = TopicReader(settings, "ranked_feeds")
    requests = [
        make_request(random.Random(i).randrange(0, 200), range(3 * i, 3 * i + 3))
        for i in range(600)
    ]
    first = ServingThread(settings, make_scorer(settings, hydrator_factory))
    second: ServingThread | None = None
    try:
        warm_up(settings, producer, reader)
        for i in range(0, len(requests), 20):
            if i == 200:  # a second member joins: partitions are split
                second = ServingThread(settings, make_scorer(settings, hydrator_factory))
            if i == 400:  # the first member leaves: the second takes everything
                stats_first = first.stop()
            send_requests(producer, requests[i : i + 20])
            time.sleep(0.1)
        ids = {r.request_id for r in requests}
        values = read_answers(reader, ids, 120)
        assert second is not None
        stats_second = second.stop()
    finally:
        first.stop_event.set()
        if second is not None:
            second.stop_event.set()
        reader.close()
    answered = Counter(request_ids_of(values))
    assert set(answered) == ids, f"lost {len(ids - set(answered))} requests"
    assert stats_first.consumed > 0 and stats_second.consumed > 0
    # Duplicates (a batch redone by the new owner) are identical answers.
    feeds = feeds_by_id(values)
    for copies in feeds.values():
        assert all(c.items == copies[0].items for c in copies)


def test_answered_feeds_are_cached_once_per_commit_and_replayable(
    group_settings, producer, hydrator_factory
):
    # The feed cache is written with each commit (all batches settled since the last one, in
    # one transaction), not once per batch, and every answered feed is in it when the loop
    # stops: a redelivery of any of them is a byte-for-byte replay.
    settings = group_settings
    reader = TopicReader(settings, "ranked_feeds")
    scorer = make_scorer(settings, hydrator_factory)
    cache = scorer.feed_cache
    assert cache is not None
    writes: list[int] = []
    put_many = cache.put_many

    def counting_put_many(feeds) -> None:
        feeds = list(feeds)
        writes.append(len(feeds))
        put_many(feeds)

    cache.put_many = counting_put_many  # type: ignore[method-assign]
    server = ServingThread(settings, scorer)
    try:
        warm_up(settings, producer, reader)
        # Made once the loop answers: their requested_at is not already past the deadline.
        requests = [make_request(500 + i, range(3 * i, 3 * i + 3)) for i in range(60)]
        send_in_bursts(producer, requests, 5, 0.02)
        ids = {r.request_id for r in requests}
        values = read_answers(reader, ids, 90)
    finally:
        stats = server.stop()
        reader.close()
    assert set(request_ids_of(values)) == ids
    assert stats.scored > stats.missed  # answered on time, by the model, not as expired
    for value in values:
        assert cache.get(json.loads(value)["request_id"]) == value
    assert sum(writes) >= len(ids)
    # One write per commit (the last commit's outcome may still be unread when it stops).
    assert len(writes) <= stats.commits + 2 < len(ids)


class _FailedSend(Future):
    """A producer future the broker never acknowledged (kafka-python's shape, with get)."""

    def __init__(self) -> None:
        super().__init__()
        self.failure(KafkaTimeoutError("injected: output never acknowledged"))

    def get(self, timeout: float | None = None) -> None:
        raise self.exception


def test_unacknowledged_output_redoes_every_unsettled_batch(
    group_settings, producer, hydrator_factory, monkeypatch
):
    # The one fault the real broker cannot be made to produce on cue: an output of a
    # request that is never acknowledged. The loop must not commit past it.
    settings = group_settings
    reader = TopicReader(settings, "ranked_feeds")
    requests = [make_request(i % 7, range(3 * i, 3 * i + 3)) for i in range(60)]
    unlucky = requests[10].request_id
    handle = _ServingLoop.handle
    failed_once: list[tuple] = []

    def handle_failing_once(self, record, tp, waiting=0, arrival=None):
        futures, cached = handle(self, record, tp, waiting, arrival)
        if record.value is not None and unlucky.encode() in record.value and not failed_once:
            failed_once.append((tp, record.offset))
            futures = [*futures, _FailedSend()]
        return futures, cached

    monkeypatch.setattr(_ServingLoop, "handle", handle_failing_once)
    server = ServingThread(settings, make_scorer(settings, hydrator_factory))
    try:
        warm_up(settings, producer, reader)
        send_in_bursts(producer, requests, 10, 0.05)
        ids = {r.request_id for r in requests}
        values: list[bytes] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            values += reader.read(1, 1, accept=lambda v: json.loads(v)["request_id"] in ids)
            answered = Counter(request_ids_of(values))
            if set(answered) == ids and answered[unlucky] >= 2:
                break
    finally:
        stats = server.stop()
        reader.close()
    assert failed_once, "the fault was never injected"
    assert stats.redeliveries >= 1
    answered = Counter(request_ids_of(values))
    assert set(answered) == ids
    assert answered[unlucky] >= 2  # answered, not acknowledged, so redone
    for copies in feeds_by_id(values).values():
        assert all(c.items == copies[0].items for c in copies)


def test_hostile_corpus_is_dead_lettered_with_offsets_and_good_requests_answered(
    group_settings, producer, hydrator_factory
):
    """A generated corpus of hostile values and keys between good requests: every hostile
    record reaches feed_requests.dlq once, with its partition and offset; every good request
    is answered; the loop never stops."""
    from hostile_corpus import generate, hostile_records

    from feedrank.schemas import DeadLetter

    settings = group_settings
    dlq = TopicReader(settings, "feed_requests.dlq")
    feeds_reader = TopicReader(settings, "ranked_feeds")
    server = ServingThread(settings, make_scorer(settings, hydrator_factory))
    hostile, good = set(), set()
    try:
        for i, (value, key) in enumerate(generate(hostile_records("feed_requests"), 80, 11)):
            request = make_request(i % 150, [3 * i, 3 * i + 1])
            send_requests(producer, [request])
            good.add(request.request_id)
            meta = producer.send("feed_requests", key=key, value=value).get(60)
            hostile.add((meta.partition, meta.offset))
        letters = [DeadLetter.model_validate_json(v) for v in dlq.read(len(hostile), 180)]
        answered = request_ids_of(
            feeds_reader.read(len(good), 120, accept=lambda v: json.loads(v)["request_id"] in good)
        )
        stats = server.stop()
    finally:
        server.stop_event.set()
        dlq.close()
        feeds_reader.close()
    assert Counter((d.partition, d.offset) for d in letters) == Counter(dict.fromkeys(hostile, 1))
    assert all(d.reason and d.source == "feed_requests" for d in letters)
    assert set(answered) == good
    assert stats.dead_lettered == len(hostile) and stats.scored >= len(good)
