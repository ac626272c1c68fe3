"""The reference path: the same matrix from ``FeatureStore.get_online_features`` (slow, exact)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from feedrank import feature_spec as spec
from serving.hydration.feast_codec import UNKNOWN_ID, device_code

if TYPE_CHECKING:
    import feast


def online_author_ids(
    store: feast.FeatureStore, tweet_ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Authors and topics of tweets through ``get_online_features`` (``-1`` when unknown)."""
    response = store.get_online_features(
        features=["tweet_authors:tweet_author_id", "tweet_attributes:tweet_topic"],
        entity_rows=[{"tweet_id": int(t)} for t in tweet_ids],
    ).to_dict()

    def ids(values: list) -> np.ndarray:
        return np.array([UNKNOWN_ID if v is None else int(v) for v in values], dtype=np.int64)

    return ids(response["tweet_author_id"]), ids(response["tweet_topic"])


def online_features_matrix(
    store: feast.FeatureStore,
    user_id: int,
    tweet_ids: Sequence[int],
    request_ts: float,
    device: str,
) -> np.ndarray:
    """The model matrix through ``get_online_features(features=ranker_v1)`` (reference path)."""
    code = device_code(device)
    if len(tweet_ids) == 0:
        return np.full((0, len(spec.model_features())), np.nan)
    authors, topics = online_author_ids(store, tweet_ids)
    rows = [
        {
            "user_id": int(user_id),
            "tweet_id": int(t),
            "author_id": int(a),
            "topic": int(c),
            "request_ts": float(request_ts),
            "device_code": code,
        }
        for t, a, c in zip(tweet_ids, authors, topics, strict=True)
    ]
    service = store.get_feature_service(spec.FEATURE_SERVICE)
    response = store.get_online_features(features=service, entity_rows=rows).to_dict()
    names = spec.model_features()
    missing = [name for name in names if name not in response]
    if missing:
        raise ValueError(f"{missing[0]} missing from the {spec.FEATURE_SERVICE} response")
    return np.array(
        [[np.nan if v is None else float(v) for v in response[name]] for name in names],
        dtype=np.float64,
    ).T
