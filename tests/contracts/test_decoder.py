"""The one bounded decoder of Kafka messages: total on any bytes and key, exact on good events."""

from __future__ import annotations

import json

import pytest
from hostile_corpus import evolved_event, hostile_values, keys, template
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedrank.schemas import (
    DEAD_LETTER_KEY_BYTES,
    DEAD_LETTER_PAYLOAD_BYTES,
    MAX_DEPTH,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    TOPIC_EVENTS,
    DeadLetter,
    decode,
    encode,
    nesting_depth,
)

pytestmark = pytest.mark.unit
TOPICS = sorted(TOPIC_EVENTS)
FAST = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FAST
@given(data=st.data(), topic=st.sampled_from(TOPICS), key=keys(), offset=st.integers(0, 2**40))
def test_every_hostile_value_is_a_dead_letter_with_where_it_came_from(data, topic, key, offset):
    value = data.draw(hostile_values(topic))
    letter = decode(topic, value, partition=2, offset=offset, key=key)
    assert isinstance(letter, DeadLetter), letter
    assert letter.reason and letter.kind and letter.source == topic
    assert (letter.partition, letter.offset) == (2, offset)
    assert letter.payload_bytes == (len(value) if value is not None else 0)
    # Bounded, so the dead letter always fits its topic whatever came in.
    assert len(letter.payload) <= DEAD_LETTER_PAYLOAD_BYTES
    assert key is None or len(letter.key) <= DEAD_LETTER_KEY_BYTES
    assert len(letter.to_bytes()) < 64 * 1024
    assert DeadLetter.model_validate_json(letter.to_bytes()) == letter


@FAST
@given(topic=st.sampled_from(TOPICS), value=st.binary(max_size=3_000), key=keys())
def test_any_bytes_decode_without_raising(topic, value, key):
    result = decode(topic, value, key=key)
    assert isinstance(result, DeadLetter | TOPIC_EVENTS[topic])


@settings(max_examples=200, deadline=None)
@given(topic=st.sampled_from(TOPICS), ident=st.integers(1, 2**62))
def test_good_events_decode_to_themselves(topic, ident):
    event = TOPIC_EVENTS[topic].model_validate(template(topic, ident))
    assert decode(topic, encode(event), key=b"\xff" * 10) == event


@FAST
@given(data=st.data(), topic=st.sampled_from(TOPICS))
def test_a_newer_producers_optional_fields_are_ignored_and_reported(data, topic):
    value, event, added = data.draw(evolved_event(topic))
    reported: list[list[str]] = []
    result = decode(topic, value, on_unknown=reported.append)
    assert result == TOPIC_EVENTS[topic].model_validate(event)
    assert reported == [added]


def test_unknown_fields_are_reported_once_per_path_and_not_at_all_when_absent():
    feed = template("impressions", 3)
    feed["impressions"] = [{**feed["impressions"][0], "ab_bucket": 7}] * 3
    reported: list[list[str]] = []
    decoded = decode("impressions", json.dumps(feed).encode(), on_unknown=reported.append)
    assert reported == [["impressions[].ab_bucket"]] and len(decoded.impressions) == 3
    good = encode(TOPIC_EVENTS["tweets"].model_validate(template("tweets", 3)))
    decode("tweets", good, on_unknown=reported.append)
    assert len(reported) == 1


@pytest.mark.parametrize("topic", TOPICS)
def test_an_older_producers_message_gets_the_defaults_of_the_fields_it_lacks(topic):
    model = TOPIC_EVENTS[topic]
    event = template(topic, 9)
    optional = {n for n, f in model.model_fields.items() if not f.is_required()}
    old = {k: v for k, v in event.items() if k == "schema_version" or k not in optional}
    if topic == "impressions":
        inner = TOPIC_EVENTS["impressions"].model_fields["impressions"].annotation.__args__[0]
        kept = {n for n, f in inner.model_fields.items() if f.is_required()}
        old["impressions"] = [
            {k: v for k, v in imp.items() if k in kept or k == "schema_version"}
            for imp in event["impressions"]
        ]
    decoded = decode(topic, json.dumps(old).encode())
    assert decoded == model.model_validate(old), decoded
    for name in optional - {"schema_version"}:
        assert getattr(decoded, name) == model.model_fields[name].get_default(
            call_default_factory=True
        )


@pytest.mark.parametrize("version", [0, 2, 99, -1, "1", "2.0", 1.0, True, None])
def test_an_unknown_major_schema_version_is_dead_lettered_with_that_reason(version):
    assert version not in READABLE_SCHEMA_VERSIONS or type(version) is not int
    value = json.dumps({**template("feed_requests", 4), "schema_version": version}).encode()
    letter = decode("feed_requests", value, offset=12)
    assert isinstance(letter, DeadLetter) and letter.kind == "schema_version"
    assert f"unknown major schema_version {version!r}" in letter.reason
    assert str(SCHEMA_VERSION) in letter.reason and letter.offset == 12


def test_every_topics_messages_carry_the_schema_version():
    for topic in TOPICS:
        wire = json.loads(encode(TOPIC_EVENTS[topic].model_validate(template(topic, 2))))
        assert wire["schema_version"] == SCHEMA_VERSION, topic
    impressions = json.loads(
        encode(TOPIC_EVENTS["impressions"].model_validate(template("impressions", 2)))
    )
    assert all(i["schema_version"] == SCHEMA_VERSION for i in impressions["impressions"])


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "too_deep"),  # the message
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "too_deep"),
        (b"[" * 1_000_000, "too_deep"),
        (b"x" * 2_000_000, "oversized"),
        (b'{"schema_version": 1, "x": NaN}', "non_finite"),
        (b'{"schema_version": 1, "x": -Infinity}', "non_finite"),
        (b'{"schema_version": 1, "x": 1e999}', "non_finite"),
        (b'{"schema_version": 1, "schema_version": 1}', "duplicate_key"),
        (b'{"schema_version": 1, "x": ' + b"9" * 5_000 + b"}", "huge_int"),
        (b'{"schema_version": 1, "x": "\xff"}', "not_utf8"),
        (b'{"schema_version": 1, "x": "\\udc00"}', "not_utf8"),
        (b'"\\"' * 300_000, "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"schema_version": 2}', "schema_version"),
        (b"", "empty"),
        (None, "empty"),
    ],
)
def test_each_kind_of_hostile_value_gets_its_reason(value, kind):
    letter = decode("feed_requests", value, partition=0, offset=7)
    assert isinstance(letter, DeadLetter)
    assert letter.kind == kind, letter.reason


def test_wire_types_are_strict_and_event_times_bounded():
    good = template("follows", 5)
    for field, value in [
        ("created_at", 1_700_000_000),  # a number is not a timestamp on the wire
        ("follower_id", "5"),
        ("created_at", "0001-01-01T00:00:00Z"),  # Spark and pandas cannot hold it
        ("created_at", "9999-12-31T23:59:59Z"),
    ]:
        letter = decode("follows", json.dumps({**good, field: value}).encode())
        assert isinstance(letter, DeadLetter) and letter.kind == "invalid", (field, value)
        assert letter.reason.startswith(field)
    # Escaped surrogate pairs are ordinary characters, not lone surrogates.
    ok = {**template("feed_requests", 1), "request_id": "\U0001f600"}
    assert decode("feed_requests", json.dumps(ok).encode()).request_id == "\U0001f600"


def test_nesting_depth_ignores_brackets_in_strings():
    assert nesting_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[", "b": [[1]]}') == 3
    assert nesting_depth(b'{"a": "\\"[[[[[[[[[[[[[[[[[[[["}') == 1
    assert nesting_depth(b"[" * (MAX_DEPTH + 1)) == MAX_DEPTH + 1
    assert decode("topic-nobody-has", b"{}").kind == "unknown_topic"
