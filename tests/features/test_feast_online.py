"""Online reads: Feast's offline retrieval == online, request context, fast path == Feast.

The training data's parity with the online store (the Spark job's rows, issue 5) is
tests/pipeline/test_pipeline_parity.py.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest
from feast_world import AS_OF, SIZES

from feedrank import feature_spec as spec
from feedrank.config import Settings, redis_client_kwargs
from feedrank.schemas import DEVICES

pytestmark = pytest.mark.integration

N_ROWS = 1000


def _entity_rows(seed: int) -> pd.DataFrame:
    """Random (user, tweet, author, topic, request) rows, unknown ids included."""
    rng = np.random.default_rng(seed)
    n = N_ROWS
    frame = pd.DataFrame(
        {
            "row": np.arange(n),
            "user_id": rng.integers(0, SIZES["users"] + 5, n),  # a few unknown users
            "tweet_id": rng.integers(0, SIZES["tweets"] + 40, n),  # and unknown tweets
            "author_id": rng.integers(-1, SIZES["authors"] + 2, n),
            "topic": rng.integers(-1, SIZES["topics"] + 1, n),
            "device_code": rng.integers(0, len(DEVICES), n),
        }
    )
    frame["request_ts"] = AS_OF.timestamp() - rng.uniform(0, 3600, n).round(3)
    frame["event_timestamp"] = AS_OF
    return frame


def _assert_equal_features(left: pd.DataFrame, right: pd.DataFrame) -> None:
    """Integers exact, floats within 1e-6, missing (None/NaN) on both sides alike."""
    for name in spec.model_features():
        a = pd.to_numeric(left[name], errors="coerce").to_numpy(dtype=np.float64)
        b = pd.to_numeric(right[name], errors="coerce").to_numpy(dtype=np.float64)
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{name}: missing differs"
        known = ~np.isnan(a)
        if spec.feature_dtype(name) == "int64":
            assert np.array_equal(a[known], b[known]), f"{name}: ints differ"
        else:
            assert np.allclose(a[known], b[known], rtol=0, atol=1e-6), f"{name}: floats differ"


def test_historical_features_equal_online_features_after_materialization(
    sqlite_store: Settings,
) -> None:
    """Feast with itself: get_historical_features(ranker_v1) at AS_OF == get_online_features
    after materializing AS_OF, request context included, for 1,000 rows."""
    from feedrank.featurestore import feature_store

    store = feature_store(sqlite_store)
    service = store.get_feature_service(spec.FEATURE_SERVICE)
    rows = _entity_rows(seed=5)
    offline = (
        store.get_historical_features(entity_df=rows, features=service)
        .to_df()
        .sort_values("row")
        .reset_index(drop=True)
    )
    online = pd.DataFrame(
        store.get_online_features(
            features=service,
            entity_rows=rows.drop(columns=["row", "event_timestamp"]).to_dict("records"),
        ).to_dict()
    )
    assert len(offline) == len(online) == N_ROWS
    known = offline[[f.name for f in spec.CONTEXT_FEATURES]].notna().all(axis=1)
    assert known.mean() > 0.5  # most rows have every context input
    assert offline["tweet_impressions_total"].notna().mean() > 0.5  # data, not all-missing
    _assert_equal_features(offline, online)


def test_request_context_is_the_same_function_offline_and_online(sqlite_store: Settings) -> None:
    """The on-demand view's values equal feedrank.context.context_features on the inputs."""
    from feedrank.context import context_features
    from feedrank.featurestore import feature_store

    store = feature_store(sqlite_store)
    rows = _entity_rows(seed=6).head(200)
    features = [f"{spec.CONTEXT_VIEW}:{f.name}" for f in spec.CONTEXT_FEATURES] + [
        "tweet_attributes:tweet_created_ts",
        "user_engagement_daily:user_active_hour_peak",
    ]
    online = pd.DataFrame(
        store.get_online_features(
            features=features,
            entity_rows=rows[["user_id", "tweet_id", "request_ts", "device_code"]].to_dict(
                "records"
            ),
        ).to_dict()
    )
    expected = context_features(
        rows["request_ts"].to_numpy(),
        rows["device_code"].to_numpy(),
        pd.to_numeric(online["tweet_created_ts"]).to_numpy(dtype=float),
        pd.to_numeric(online["user_active_hour_peak"]).to_numpy(dtype=float),
    )
    for feature in spec.CONTEXT_FEATURES:
        got = pd.to_numeric(online[feature.name]).to_numpy(dtype=float)
        assert np.allclose(got, expected[feature.name], equal_nan=True, rtol=0, atol=1e-12)


def _random_requests(seed: int, count: int) -> list[tuple[int, list[int], float, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        tweets = rng.integers(0, SIZES["tweets"] + 50, int(rng.integers(1, 300))).tolist()
        out.append(
            (
                int(rng.integers(0, SIZES["users"] + 3)),
                tweets,
                AS_OF.timestamp() + float(rng.uniform(-7200, 7200)),
                DEVICES[int(rng.integers(0, len(DEVICES)))],
            )
        )
    return out


def _assert_fast_path_equals_feast(store_settings: Settings) -> None:
    from serving.hydration import FeatureHydrator, online_author_ids, online_features_matrix

    hydrator = FeatureHydrator(store_settings)
    for user_id, tweets, request_ts, device in _random_requests(seed=9, count=6):
        reference = online_features_matrix(hydrator.store, user_id, tweets, request_ts, device)
        fast = hydrator.hydrate(user_id, tweets, request_ts, device)
        assert fast.shape == (len(tweets), len(spec.model_features()))
        assert np.isnan(fast).any() and not np.isnan(fast).all()
        mismatch = ~np.isclose(fast, reference, rtol=0, atol=1e-12, equal_nan=True)
        assert not mismatch.any(), [
            spec.model_features()[j] for j in np.flatnonzero(mismatch.any(axis=0))
        ]
        authors, _ = online_author_ids(hydrator.store, tweets)
        assert np.array_equal(hydrator.author_ids(tweets), authors)
    unknown = hydrator.hydrate(10**9, [10**9, 10**9 + 1], AS_OF.timestamp(), "web")
    context = [spec.model_features().index(f.name) for f in spec.CONTEXT_FEATURES[:5]]
    assert np.isnan(np.delete(unknown, context, axis=1)).all()  # documented default: NaN
    with pytest.raises(ValueError, match="unknown device"):
        hydrator.hydrate(0, [1], AS_OF.timestamp(), "smartwatch")
    hydrator.close()


def test_fast_path_equals_get_online_features_on_sqlite(sqlite_store: Settings) -> None:
    _assert_fast_path_equals_feast(sqlite_store)


def test_fast_path_equals_get_online_features_on_redis(redis_store: Settings) -> None:
    _assert_fast_path_equals_feast(redis_store)


def _push_counters(store: Any, tweets: dict[int, tuple[int, int]], users: dict[int, int]) -> None:
    from feast.data_source import PushMode

    from feedrank.featurestore import push_source_name

    now = pd.Timestamp.now(tz="UTC")
    frames = {
        "tweet_realtime": pd.DataFrame(
            [(t, a, b) for t, (a, b) in tweets.items()],
            columns=["tweet_id", "tweet_engagements_30m", "tweet_engagements_1h"],
        ),
        "user_realtime": pd.DataFrame(
            list(users.items()), columns=["user_id", "user_engagements_1h"]
        ),
    }
    for view, frame in frames.items():
        frame = frame.astype("int64").assign(event_timestamp=now, created_timestamp=now)
        store.push(push_source_name(view), frame, to=PushMode.ONLINE)


def test_fast_path_on_redis_follows_pushes_through_its_mirror(redis_store: Settings) -> None:
    """Pushed counters reach the in-memory mirror of the stream views (new keys, changed
    keys), also when they were written while its subscription was cut."""
    import redis

    from feedrank.featurestore import feature_store
    from serving.hydration import FeatureHydrator, online_features_matrix

    hydrator = FeatureHydrator(redis_store)
    writer = feature_store(redis_store)  # another FeatureStore, as the stream job has
    client = redis.Redis(**redis_client_kwargs(redis_store))
    names = spec.model_features()
    counters = [names.index(f) for f in ("tweet_engagements_30m", "tweet_engagements_1h")]
    user_col = names.index("user_engagements_1h")
    new_user, new_tweets, known = 10**6, [10**6 + 1, 10**6 + 2], 7
    request = (new_user, [*new_tweets, known], AS_OF.timestamp(), "web")
    try:
        assert hydrator.stream_reads == "mirror"
        before = hydrator.hydrate(*request)
        assert np.isnan(before[:2][:, counters]).all() and np.isnan(before[0, user_col])

        _push_counters(writer, {new_tweets[0]: (3, 4), known: (11, 12)}, {new_user: 5})
        hydrator.sync()
        after = hydrator.hydrate(*request)
        assert after[0, counters].tolist() == [3.0, 4.0]
        assert after[2, counters].tolist() == [11.0, 12.0]
        assert np.isnan(after[1, counters]).all() and after[0, user_col] == 5.0
        reference = online_features_matrix(writer, *request)
        assert np.allclose(after, reference, rtol=0, atol=1e-12, equal_nan=True)

        # Cut the mirror's subscription; a push while it reconnects is still picked up.
        assert client.client_kill_filter(_type="pubsub") >= 1
        _push_counters(writer, {known: (21, 22)}, {new_user: 6})
        hydrator.sync()
        again = hydrator.hydrate(*request)
        assert again[2, counters].tolist() == [21.0, 22.0] and again[0, user_col] == 6.0
        assert hydrator.stream_reads == "mirror"
    finally:
        hydrator.close()


def test_fast_path_sees_a_new_materialization(sqlite_store: Settings) -> None:
    """Re-materializing a later window is picked up by the cached views."""
    from feast_world import materialize_as_of

    from serving.hydration import FeatureHydrator, online_features_matrix

    hydrator = FeatureHydrator(sqlite_store, refresh_interval_s=0.0)
    request = (3, list(range(0, 400, 3)), AS_OF.timestamp(), "mobile")
    before = hydrator.hydrate(*request)
    later = AS_OF + dt.timedelta(days=1)
    # Leaves the store at ``later``: this stays the last test that reads sqlite_store.
    materialize_as_of(sqlite_store, later)
    after = hydrator.hydrate(*request)
    reference = online_features_matrix(hydrator.store, *request)
    assert np.allclose(after, reference, rtol=0, atol=1e-12, equal_nan=True)
    assert not np.allclose(before, after, rtol=0, atol=1e-12, equal_nan=True)
