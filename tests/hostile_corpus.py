"""The hostile-message corpus: generated Kafka records no reader may choke on.

Strategies (hypothesis) for values and keys that must each end as a dead letter or a
quarantined row, and for good events built from the contract's models, so a reader can be
checked to account for every record: each good one used once, each hostile one refused with
its reason and offset. Imported by basename (``tests/`` is on ``sys.path`` through the root
``conftest.py``).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from feedrank.schemas import (
    TOPIC_EVENTS,
    Engagement,
    FeedRequest,
    Follow,
    Impression,
    RankedFeed,
    RankedItem,
    ServedImpressions,
    Tweet,
    encode,
)

T0 = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
# Below the broker's 1 MiB message limit with room for the record's framing.
LARGEST_VALUE_BYTES = 900_000


def template(topic: str, ident: int) -> dict[str, Any]:
    """A valid event of ``topic`` as a JSON object, made unique by ``ident``."""
    at = T0 + dt.timedelta(seconds=ident % 86_400)
    events = {
        "tweets": lambda: Tweet(
            tweet_id=ident,
            author_id=3,
            created_at=at,
            topic=2,
            has_media=False,
            has_link=True,
            length=140,
            language="en",
        ),
        "follows": lambda: Follow(follower_id=ident, followee_id=7, created_at=at),
        "feed_requests": lambda: FeedRequest(
            request_id=f"req-{ident}",
            user_id=ident % 150,
            requested_at=dt.datetime.now(dt.UTC),
            device="web",
            candidate_tweet_ids=[1, 2, 3],
        ),
        "impressions": lambda: ServedImpressions(
            impressions=[
                Impression(
                    request_id=f"req-{ident}",
                    user_id=4,
                    tweet_id=ident,
                    author_id=9,
                    position=0,
                    served_at=at,
                    model_version="v1",
                    score=0.5,
                    features=[0.25, None],
                )
            ]
        ),
        "engagements": lambda: Engagement(
            request_id=f"req-{ident}",
            user_id=ident,
            tweet_id=ident,
            author_id=9,
            head="like",
            engaged_at=at,
        ),
        "ranked_feeds": lambda: RankedFeed(
            request_id=f"req-{ident}",
            user_id=5,
            model_version="v1",
            degraded=False,
            items=[RankedItem(tweet_id=1, author_id=2, score=0.5, position=0)],
            requested_at=at,
            served_at=at,
            deadline_at=at + dt.timedelta(milliseconds=300),
        ),
    }
    return json.loads(encode(events[topic]()))


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _scalar_fields(obj: dict[str, Any]) -> list[str]:
    return [k for k, v in obj.items() if k != "schema_version" and not isinstance(v, list | dict)]


# Values no scalar field of the contract accepts, even by coercion.
_BAD_VALUES = [[], {}, [[1]], {"a": 1}, [None], [True, "x"]]


@st.composite
def corrupted_event(draw: st.DrawFn, topic: str) -> bytes:
    """A valid event of ``topic`` with one thing wrong that the contract refuses."""
    event = template(topic, draw(st.integers(1, 10**12)))
    # A served feed's fields are those of its impressions: corrupt the first one.
    obj = event["impressions"][0] if topic == "impressions" else event
    how = draw(
        st.sampled_from(["missing", "version", "wrong", "nan", "huge", "dup", "surrogate", "nest"])
    )
    field = draw(st.sampled_from(_scalar_fields(obj)))

    def whole(inner: bytes) -> bytes:
        if topic != "impressions":
            return inner
        return b'{"schema_version":1,"impressions":[' + inner + b"]}"

    if how == "missing":
        model = Impression if topic == "impressions" else TOPIC_EVENTS[topic]
        required = [k for k, f in model.model_fields.items() if f.is_required()]
        gone = draw(st.sampled_from(required))
        return whole(_dumps({k: v for k, v in obj.items() if k != gone}))
    if how == "huge" and isinstance(obj[field], float):  # a float takes any integer
        field = "user_id"
    text = _dumps(obj).decode()
    without = _dumps({k: v for k, v in obj.items() if k != field}).decode()
    if how == "version":
        version = draw(st.sampled_from([0, 2, 3, "1", "1.1", 1.0, True, None, -1]))
        return _dumps({**event, "schema_version": version})
    if how == "wrong":
        return whole(_dumps({**obj, field: draw(st.sampled_from(_BAD_VALUES))}))
    if how == "nan":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]))
        return whole((without[:-1] + f',"{field}":{token}' + "}").encode())
    if how == "huge":
        digits = draw(st.integers(20, 6_000))
        return whole((without[:-1] + f',"{field}":' + "9" * digits + "}").encode())
    if how == "dup":
        return whole((text[:-1] + f',"{field}":' + json.dumps(obj[field]) + "}").encode())
    if how == "surrogate":  # json.dumps writes the lone surrogate as an escape
        return whole(_dumps({**obj, field: "a\ud800b"}))
    depth = draw(st.integers(17, 2_000))
    return whole((without[:-1] + f',"{field}":' + "[" * depth + "]" * depth + "}").encode())


@st.composite
def evolved_event(draw: st.DrawFn, topic: str) -> tuple[bytes, dict[str, Any], list[str]]:
    """A valid event of ``topic`` as a newer producer writes it: unknown optional fields added
    at the top and inside nested objects. Returns the bytes, the event the reader must get
    (the template) and the paths of the added fields, each once."""
    event = template(topic, draw(st.integers(1, 10**12)))
    wire = json.loads(json.dumps(event))
    names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)
    values = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20)
    values = values | st.lists(st.integers(0, 9), max_size=3) | st.dictionaries(names, values)
    added: list[str] = []
    targets = [("", wire, TOPIC_EVENTS[topic])]
    if topic == "impressions":
        targets.append(("impressions[].", wire["impressions"][0], Impression))
    if topic == "ranked_feeds":
        targets.append(("items[].", wire["items"][0], RankedItem))
    for prefix, obj, model in targets:
        for name in draw(st.lists(names, max_size=3, unique=True)):
            if name not in model.model_fields:
                obj[name] = draw(values)
                added.append(prefix + name)
    if not added:
        wire["added_in_a_minor_version"] = 1
        added.append("added_in_a_minor_version")
    return _dumps(wire), event, added


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """Brackets nested past any decoder's recursion: arrays, objects, mixed, unbalanced."""
    # At most 6 bytes a level (objects): every kind stays under the largest value a producer
    # sends (deeper ones were refused by the producer, not the reader, and failed the test).
    depth = draw(st.integers(17, LARGEST_VALUE_BYTES // 6))
    kind = draw(st.sampled_from(["array", "object", "mixed", "unclosed"]))
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "mixed":
        return b'[{"a":' * (depth // 2) + b"0" + b"}]" * (depth // 2)
    return b"[" * depth


@st.composite
def giant(draw: st.DrawFn, topic: str) -> bytes:
    """A valid-looking event with one giant string (up to the broker's limit) in a string
    field of the contract (an unknown field may be large: only the whole value is bounded)."""
    event = template(topic, draw(st.integers(1, 10**12)))
    # A served feed's strings are those of its impressions; the first one copied, as the
    # template's impressions may share one dict (one giant string, not one per impression).
    obj = event
    if topic == "impressions":
        obj = event["impressions"][0] = dict(event["impressions"][0])
    size = draw(st.integers(70, LARGEST_VALUE_BYTES - 2_000))
    field = draw(st.sampled_from([k for k, v in obj.items() if isinstance(v, str)]))
    obj[field] = "g" * size
    return _dumps(event)


def _not_utf8(raw: bytes) -> bytes:
    return raw[: len(raw) // 2] + b"\xff\xfe\xc3" + raw[len(raw) // 2 :]


def non_objects() -> st.SearchStrategy[bytes]:
    """JSON that is valid but not an object (within the depth bound)."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
    return values.map(_dumps)


def hostile_values(topic: str) -> st.SearchStrategy[bytes | None]:
    """Every kind of value a reader of ``topic`` must refuse without stopping."""
    return st.one_of(
        st.just(None),  # a tombstone
        st.just(b""),
        nested(),
        giant(topic),
        corrupted_event(topic),
        corrupted_event(topic).map(_not_utf8),
        non_objects(),
        st.binary(min_size=1, max_size=4_000).filter(lambda b: not b.strip().startswith(b"{")),
        st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b'{"a":NaN}', b"\x00" * 64]),
    )


def keys() -> st.SearchStrategy[bytes | None]:
    """Record keys: none, ordinary, binary, huge."""
    return st.one_of(
        st.none(),
        st.binary(max_size=64),
        st.integers(0, 10**6).map(lambda i: str(i).encode()),
        st.integers(1_000, 100_000).map(lambda n: b"\xff" * n),
    )


def hostile_records(topic: str) -> st.SearchStrategy[tuple[bytes | None, bytes | None]]:
    """(value, key) pairs a producer can send: a tombstone needs a key."""
    return st.tuples(hostile_values(topic), keys()).map(
        lambda vk: (vk[0], vk[1] if vk[0] is not None or vk[1] is not None else b"tombstone")
    )


def generate(strategy: st.SearchStrategy[Any], n: int, run_seed: int = 0) -> list[Any]:
    """``n`` examples of ``strategy``, reproducibly (for tests whose one run is expensive,
    such as a Spark job: the corpus is generated first, then produced and checked once)."""
    examples: list[Any] = []

    @seed(run_seed)
    @settings(
        max_examples=n,
        phases=[Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        examples.append(example)

    collect()
    return examples
