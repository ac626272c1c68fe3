"""Helpers of the serving tests (imported by basename: pytest puts this folder on sys.path)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Iterable

import numpy as np

from feedrank.config import HEADS, Settings
from feedrank.feature_spec import LIGHT_RANKER_FEATURES, model_features
from feedrank.schemas import FeedRequest, encode

N_FEATURES = len(model_features())


def with_serving(settings: Settings, **serving: object) -> Settings:
    """``settings`` with some ``serving`` fields replaced."""
    return settings.model_copy(update={"serving": settings.serving.model_copy(update=serving)})


def train_throwaway_model(settings: Settings, seed: int, version: str) -> str:
    """A tiny five-head model with a learnable signal, saved as a model folder.

    Labels depend on a few contract features so scores differ between candidates (an
    order test on constant scores could not fail).
    """
    import xgboost as xgb

    from feedrank.model import LightRanker
    from feedrank.model_files import save_model

    rng = np.random.default_rng(seed)
    n = 600
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    signal = np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 3]) - np.nan_to_num(X[:, 7])
    boosters = {}
    for k, head in enumerate(HEADS):
        logit = signal * (1.0 if k % 2 == 0 else -0.7) + rng.normal(scale=0.5, size=n) - 1.0
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        dtrain = xgb.DMatrix(X, label=y, missing=np.nan)
        boosters[head] = xgb.train(
            {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1},
            dtrain,
            num_boost_round=8,
        )
    light_n = len(LIGHT_RANKER_FEATURES)
    light = LightRanker(
        features=LIGHT_RANKER_FEATURES,
        coef=tuple(float(c) for c in rng.normal(size=light_n)),
        intercept=-1.0,
        mean=(0.0,) * light_n,
        scale=(1.0,) * light_n,
        fill_values=(0.0,) * light_n,
    )
    save_model(
        settings,
        boosters=boosters,
        light_ranker=light,
        keep_rates={h: 1.0 for h in HEADS},
        training_data={"run": "throwaway", "manifest_sha256": "0" * 64},
        version=version,
    )
    return version


def make_request(
    user_id: int,
    tweet_ids: Iterable[int],
    request_id: str | None = None,
    requested_at: dt.datetime | None = None,
    device: str = "mobile",
) -> FeedRequest:
    return FeedRequest(
        request_id=request_id or uuid.uuid4().hex,
        user_id=user_id,
        requested_at=requested_at or dt.datetime.now(dt.UTC),
        device=device,
        candidate_tweet_ids=list(tweet_ids),
    )


# ------------------------------------------------------------------------ Kafka helpers


def fresh_group(settings: Settings, topic: str = "feed_requests") -> Settings:
    """``settings`` with a new consumer group whose committed offsets are the topic's end.

    Other tests leave messages in the shared topics; a fresh group starting at the end sees
    only what the calling test produces.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    group_id = f"test-serving-{uuid.uuid4().hex[:10]}"
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = consumer.end_offsets(partitions)
        consumer.assign(partitions)
        consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in ends.items()})
    finally:
        consumer.close(autocommit=False)
    return with_serving(settings, group_id=group_id)


class TopicReader:
    """Reads a topic from the offsets it had when the reader was made (assign, no group)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False
        )
        partitions = [TopicPartition(topic, p) for p in self.consumer.partitions_for_topic(topic)]
        ends = self.consumer.end_offsets(partitions)
        self.consumer.assign(partitions)
        for tp, offset in ends.items():
            self.consumer.seek(tp, offset)

    def read(
        self, until: int, timeout_s: float, accept=lambda value: True, key=None
    ) -> list[bytes]:
        """Messages (values) accepted by ``accept`` until ``until`` of them or the timeout.

        With ``key`` (value → identity), ``until`` counts distinct identities: duplicates
        (a batch redone after a rebalance) do not end the read before every one arrived.
        """
        out: list[bytes] = []
        seen: set = set()
        deadline = time.monotonic() + timeout_s
        while (len(seen) if key else len(out)) < until and time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=200).values():
                new = [r.value for r in records if accept(r.value)]
                out += new
                if key:
                    seen.update(key(v) for v in new)
        return out

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def send_requests(producer, requests: Iterable[FeedRequest]) -> None:
    for request in requests:
        producer.send("feed_requests", key=str(request.user_id).encode(), value=encode(request))
    producer.flush(timeout=30)


def send_in_bursts(producer, requests: list[FeedRequest], burst: int, pause_s: float) -> None:
    """Send ``requests`` ``burst`` at a time, ``pause_s`` apart: polls return several."""
    for i in range(0, len(requests), burst):
        send_requests(producer, requests[i : i + burst])
        time.sleep(pause_s)


def request_ids_of(values: Iterable[bytes]) -> list[str]:
    return [json.loads(v)["request_id"] for v in values]


class TableHydrator:
    """Deterministic feature values per (user, tweet) for scorer unit tests (no Feast).

    The integration tests use the real :class:`serving.hydration.FeatureHydrator`; here the
    point is the scorer's own logic, so features only need to be fixed and varied.
    """

    def __init__(self) -> None:
        self.calls = 0

    def hydrate(self, user_id: int, tweet_ids: list[int], request_ts: float, device: str):
        self.calls += 1
        rows = []
        for tid in tweet_ids:
            seed = int.from_bytes(hashlib.sha256(f"{user_id}:{tid}".encode()).digest()[:4], "big")
            rows.append(np.random.default_rng(seed).normal(size=N_FEATURES))
        X = np.asarray(rows, dtype=np.float32).reshape(len(tweet_ids), N_FEATURES)
        X[:, 1] = np.nan  # a missing feature, as Feast returns for unknown entities
        return X

    def author_ids(self, tweet_ids: list[int]) -> np.ndarray:
        return np.asarray([tid % 4 for tid in tweet_ids], dtype=np.int64)

    def close(self) -> None:
        pass
