"""Event and lake-table schemas: the data contract, defined once.

Long because: every event's schema and the one decoder of consumed records are one contract.

Every event has a pydantic model (validated at each boundary: Kafka producers and consumers,
the landing job, the CLI) and an Arrow schema derived from that same model for the Parquet
lake, so the two can never drift. Kafka payloads are JSON objects carrying
``schema_version``. :func:`decode` is the one reader of Kafka payloads: bounded in size and
nesting depth, strict about UTF-8 and JSON, it returns the event or a :class:`DeadLetter`
with the reason and where the record came from, for any bytes and any key; never a crash and
never a silent drop.

Schema evolution: ``schema_version`` is the *major* version. Adding an optional field (with a
default) keeps it, so producers and readers can be upgraded in any order: a reader ignores
fields it does not know (and reports them, see :func:`decode`'s ``on_unknown``), and an old
producer's message without the new field gets its default. A breaking change (a field
removed, renamed, retyped, or made required) bumps ``schema_version``; a reader dead-letters
a version it does not know (kind ``schema_version``) rather than misread it. Producers build
the models themselves, which still forbid unknown fields, so a typo in code fails loudly.

Timestamps are UTC ``datetime`` in Python and ``timestamp[us, UTC]`` in Arrow (Spark rejects
nanosecond Parquet timestamps).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from feedrank.config import HEADS, TopicConfig, Topics

SCHEMA_VERSION = 1
# The major versions this code reads; a message of any other is dead-lettered.
READABLE_SCHEMA_VERSIONS: frozenset[int] = frozenset({SCHEMA_VERSION})
Head = Literal["like", "reply", "retweet", "click", "negative"]
Device = Literal["mobile", "web", "tablet"]
DEVICES: tuple[str, ...] = typing.get_args(Device)
assert typing.get_args(Head) == HEADS

Int32 = Annotated[int, Field(ge=-(2**31), lt=2**31), "int32"]
Id = Annotated[int, Field(ge=0, lt=2**63)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
# Event times the lake can hold: Spark refuses Parquet dates before 1582 by default and
# pandas' nanosecond timestamps end in 2262, so a record dated year 1 or 9999 would land and
# then break every job that reads its partition.
EARLIEST_EVENT_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST_EVENT_TIME = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


def _plausible_time(value: dt.datetime) -> dt.datetime:
    if not EARLIEST_EVENT_TIME <= value < LATEST_EVENT_TIME:
        raise ValueError(
            f"event time outside [{EARLIEST_EVENT_TIME.year}, {LATEST_EVENT_TIME.year})"
        )
    return value


EventTime = Annotated[AwareDatetime, AfterValidator(_plausible_time)]


class Event(BaseModel):
    """Base of every record that crosses a boundary."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = SCHEMA_VERSION

    def lake_rows(self) -> list[Event]:
        """The rows this event lands as in its topic's lake table: itself, by default."""
        return [self]


class User(Event):
    """A user's public profile (the users table; a snapshot per simulated day)."""

    user_id: Id
    created_at: EventTime
    tz_offset_hours: Int32 = Field(ge=-12, le=14)
    primary_device: Device
    is_author: bool


class Tweet(Event):
    """A posted tweet (topic ``tweets``, keyed by tweet id)."""

    tweet_id: Id
    author_id: Id
    created_at: EventTime
    topic: Int32 = Field(ge=0)
    has_media: bool
    has_link: bool
    length: Int32 = Field(ge=1, le=280)
    language: str = Field(min_length=2, max_length=8)


class Follow(Event):
    """``follower_id`` started following ``followee_id`` (topic ``follows``, keyed by follower)."""

    follower_id: Id
    followee_id: Id
    created_at: EventTime


class FeedRequest(Event):
    """A home-timeline fetch with its candidates (topic ``feed_requests``, keyed by user)."""

    request_id: str = Field(min_length=1, max_length=64)
    user_id: Id
    requested_at: EventTime
    device: Device
    candidate_tweet_ids: list[Id] = Field(min_length=1, max_length=5_000)


class Impression(Event):
    """A tweet shown at a position of a served feed (a row of the ``impressions`` table; on
    Kafka, a feed's impressions travel together as one :class:`ServedImpressions`).

    ``features`` is the exact feature vector the scorer used (ordered as the model's
    contract), present for sampled impressions of a model-ranked feed only. A missing value
    (NaN for the model) is ``null`` in JSON, so it is ``None`` here.
    """

    request_id: str = Field(min_length=1, max_length=64)
    user_id: Id
    tweet_id: Id
    author_id: Id
    position: Int32 = Field(ge=0)
    served_at: EventTime
    model_version: str = Field(min_length=1, max_length=64)
    arm: str = Field(default="control", min_length=1, max_length=32)
    score: float | None = None
    features: list[float | None] | None = None


class ServedImpressions(Event):
    """The impressions of one served feed in one message (topic ``impressions``, keyed by user).

    The serving loop sends a feed's ~50 impressions as one record: encoding and sending them
    one by one took 2.8 ms of the loop per feed (kafka-python's ``send`` is pure Python), one
    message 0.4 ms, and the broker and the producer's sender thread handle 1 record, not 50.
    The landing job lands each impression as a row of the ``impressions`` table.
    """

    impressions: list[Impression] = Field(min_length=1, max_length=5_000)

    def lake_rows(self) -> list[Event]:
        return list(self.impressions)


class Engagement(Event):
    """A user engaged with a served tweet (topic ``engagements``, keyed by user)."""

    request_id: str = Field(min_length=1, max_length=64)
    user_id: Id
    tweet_id: Id
    author_id: Id
    head: Head
    engaged_at: EventTime


class OracleRow(Event):
    """The simulator's true engagement probabilities of one impression. Never a feature."""

    request_id: str
    user_id: Id
    tweet_id: Id
    served_at: EventTime
    p_like: Prob
    p_reply: Prob
    p_retweet: Prob
    p_click: Prob
    p_negative: Prob


class RankedItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tweet_id: Id
    author_id: Id
    score: float
    position: Int32 = Field(ge=0)


class RankedFeed(Event):
    """The scorer's answer to a feed request (topic ``ranked_feeds``, keyed by user)."""

    request_id: str = Field(min_length=1, max_length=64)
    user_id: Id
    model_version: str = Field(min_length=1, max_length=64)
    arm: str = Field(default="treatment", min_length=1, max_length=32)
    degraded: bool
    items: list[RankedItem]
    requested_at: EventTime
    served_at: EventTime
    deadline_at: EventTime
    timings_ms: dict[str, float] = Field(default_factory=dict)
    # Answered after deadline_at (a miss is counted, never hidden).
    deadline_missed: bool = False


DeadLetterKind = Literal[
    "unknown_topic",
    "empty",
    "not_bytes",
    "oversized",
    "not_utf8",
    "too_deep",
    "not_json",
    "non_finite",
    "huge_int",
    "duplicate_key",
    "not_object",
    "schema_version",
    "invalid",
    "scoring_failed",
    "undecodable",
]


class DeadLetter(BaseModel):
    """A record that could not be accepted, with why (``<topic>.dlq`` or the lake's quarantine).

    ``payload`` is the value as text (invalid UTF-8 replaced), cut to
    :data:`DEAD_LETTER_PAYLOAD_BYTES` so a dead letter always fits its topic; ``payload_bytes``
    is the full size, and ``partition``/``offset`` say where the whole message stays for the
    topic's retention.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    reason: str
    payload: str
    failed_at: AwareDatetime
    kind: DeadLetterKind = "invalid"
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    payload_bytes: int = 0

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic of the record's source topic."""
        return Topics.dlq(self.source)

    def to_bytes(self) -> bytes:
        """The wire form of the dead letter (compact UTF-8 JSON)."""
        return self.__pydantic_serializer__.to_json(self)


# Topic name -> the event carried, and the lake table it lands in (same name).
TOPIC_EVENTS: dict[str, type[Event]] = {
    Topics.TWEETS: Tweet,
    Topics.FOLLOWS: Follow,
    Topics.FEED_REQUESTS: FeedRequest,
    Topics.IMPRESSIONS: ServedImpressions,
    Topics.ENGAGEMENTS: Engagement,
    Topics.RANKED_FEEDS: RankedFeed,
}
# Lake table name -> its row; a topic's table holds the ``lake_rows()`` of its events.
LAKE_TABLES: dict[str, type[Event]] = {
    "users": User,
    **{name: model for name, model in TOPIC_EVENTS.items() if name != Topics.RANKED_FEEDS},
    "impressions": Impression,
    "oracle": OracleRow,
}
# The event-time column of each table; it decides the table's date= partition.
EVENT_TIME: dict[str, str] = {
    "users": "created_at",
    "tweets": "created_at",
    "follows": "created_at",
    "feed_requests": "requested_at",
    "impressions": "served_at",
    "engagements": "engaged_at",
    "oracle": "served_at",
    "ranked_feeds": "served_at",
}


def _arrow_type(annotation: Any, metadata: Iterable[Any] = ()) -> pa.DataType:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *extra = typing.get_args(annotation)
        return _arrow_type(base, [*metadata, *extra])
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _arrow_type(inner, metadata)
    if origin is Literal:
        return _arrow_type(type(typing.get_args(annotation)[0]), metadata)
    if origin is list:
        (inner,) = typing.get_args(annotation)
        return pa.list_(_arrow_type(inner))
    if origin is dict:
        key, value = typing.get_args(annotation)
        return pa.map_(_arrow_type(key), _arrow_type(value))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct([arrow_field(n, f) for n, f in annotation.model_fields.items()])
    if annotation is bool:
        return pa.bool_()
    if annotation is int:
        return pa.int32() if "int32" in metadata else pa.int64()
    if annotation is float:
        return pa.float64()
    if annotation is str:
        return pa.string()
    if annotation in (dt.datetime, AwareDatetime):
        return pa.timestamp("us", tz="UTC")
    raise TypeError(f"no Arrow type for {annotation!r}")


def arrow_field(name: str, field: Any) -> pa.Field:
    nullable = not field.is_required() and field.default is None
    return pa.field(name, _arrow_type(field.annotation, field.metadata), nullable=nullable)


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of a table, derived from its pydantic model."""
    return pa.schema([arrow_field(n, f) for n, f in model.model_fields.items()])


def table_schema(table: str) -> pa.Schema:
    """Arrow schema of a lake table by name; raises ``ValueError`` for an unknown table."""
    if table not in LAKE_TABLES:
        raise ValueError(f"{table} missing from schema (known: {', '.join(LAKE_TABLES)})")
    return arrow_schema(LAKE_TABLES[table])


def encode(event: Event) -> bytes:
    """The Kafka wire form of an event: compact UTF-8 JSON.

    The bytes of ``event.model_dump_json()``, straight from the model's serializer (no round
    trip through ``str``): the serving loop encodes ~50 impressions per feed.
    """
    return event.__pydantic_serializer__.to_json(event)


# Decoder bounds. The contracts nest at most 4 deep (ServedImpressions -> impressions ->
# Impression -> features). Integers need no bound of ours: Python refuses to parse more than
# sys.get_int_max_str_digits() (4,300) digits, and every int field of the contract is bounded.
MAX_PAYLOAD_BYTES: int = TopicConfig.model_fields["max_message_bytes"].default
MAX_DEPTH = 16
DEAD_LETTER_PAYLOAD_BYTES = 4096
DEAD_LETTER_KEY_BYTES = 256
# The depth scan's patterns (run by re in C, linear whatever the input): an escape, then a
# string once the escapes are gone.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_JSON_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _Rejected(ValueError):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def nesting_depth(payload: bytes) -> int:
    """How deep a JSON parser would recurse on ``payload``: the most brackets open at once,
    outside strings. Linear and without recursion, whatever the bytes."""
    unescaped = _ESCAPE.sub(b"", payload)
    brackets = _JSON_STRING.sub(b"", unescaped).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _reject_constant(token: str) -> Any:
    raise _Rejected("non_finite", f"non_finite: {token} is not a JSON number")


def _finite_float(token: str) -> float:
    number = float(token)
    if not math.isfinite(number):
        raise _Rejected("non_finite", f"non_finite: {token[:40]} overflows a float")
    return number


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Rejected("duplicate_key", f"duplicate_key: {dup[:64]!r} appears twice")
    return out


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a parsed (depth-bounded) value holds a string that is not valid Unicode."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _text_prefix(data: bytes | None, limit: int) -> str:
    if data is None:
        return ""
    return bytes(data[:limit]).decode("utf-8", errors="replace")


@functools.cache
def _nested_models(model: type[BaseModel]) -> dict[str, tuple[bool, type[BaseModel]]]:
    """Fields of ``model`` that hold a model, or a list of models: name → (is_list, model)."""
    nested = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
        is_list = typing.get_origin(annotation) is list
        inner = typing.get_args(annotation)[0] if is_list else annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            nested[name] = (is_list, inner)
    return nested


def _strip_unknown(model: type[BaseModel], raw: dict[str, Any], path: str) -> list[str]:
    """Remove, in place, the keys of ``raw`` (and of its nested objects) that ``model`` does
    not define; returns their dotted paths (list items as ``[]``). Values of the wrong shape
    are left for validation to refuse."""
    fields = model.model_fields
    unknown = [key for key in raw if key not in fields]
    for key in unknown:
        del raw[key]
    found = [f"{path}{key}" for key in unknown]
    for name, (is_list, inner) in _nested_models(model).items():
        value = raw.get(name)
        if is_list and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    found += _strip_unknown(inner, item, f"{path}{name}[].")
        elif not is_list and isinstance(value, dict):
            found += _strip_unknown(inner, value, f"{path}{name}.")
    return found


def _parse(model: type[Event], payload: Any, max_bytes: int) -> tuple[Event, list[str]]:
    """The event in ``payload`` and the unknown fields it ignored, or :class:`_Rejected`
    with the kind and reason."""
    if payload is None:
        raise _Rejected("empty", "empty: no value (a tombstone)")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise _Rejected("not_bytes", f"not_bytes: value of type {type(payload).__name__}")
    payload = bytes(payload)
    if not payload:
        raise _Rejected("empty", "empty: zero-length value")
    if len(payload) > max_bytes:
        raise _Rejected("oversized", f"oversized: {len(payload)} bytes > {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Rejected("not_utf8", f"not_utf8: {exc.reason} at byte {exc.start}") from None
    if (depth := nesting_depth(payload)) > MAX_DEPTH:
        raise _Rejected("too_deep", f"too_deep: nested {depth} levels (> {MAX_DEPTH})")
    try:
        raw = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except _Rejected:
        raise
    except json.JSONDecodeError as exc:
        raise _Rejected("not_json", f"not JSON: {exc}") from None
    except ValueError as exc:  # Python's own int-digit limit
        raise _Rejected("huge_int", f"huge_int: {exc}"[:300]) from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(raw):
        raise _Rejected("not_utf8", "not_utf8: a string escapes a lone UTF-16 surrogate")
    if not isinstance(raw, dict):
        raise _Rejected("not_object", f"not_object: a JSON {type(raw).__name__}, not an object")
    version = raw.get("schema_version")
    if type(version) is not int or version not in READABLE_SCHEMA_VERSIONS:
        readable = ", ".join(map(str, sorted(READABLE_SCHEMA_VERSIONS)))
        raise _Rejected(
            "schema_version",
            f"schema_version: unknown major schema_version {repr(version)[:40]} "
            f"(this reader knows {readable})",
        )
    # A newer producer's optional fields: dropped (the vetted text is re-encoded without
    # them) and reported, so a rolling upgrade never dead-letters a whole topic.
    unknown = _strip_unknown(model, raw, "")
    if unknown:
        payload = json.dumps(raw, separators=(",", ":")).encode()
    try:
        # Strict, from the vetted text: the wire types are the contract's own (a number is no
        # timestamp, "1" no id, 1 no boolean), which lax coercion of the parsed dict allowed.
        return model.model_validate_json(payload, strict=True), unknown
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise _Rejected(
            "invalid", f"{where}: {first['msg']} ({exc.error_count()} error(s))"[:500]
        ) from None


def decode(
    topic: str,
    payload: bytes | None,
    *,
    partition: int | None = None,
    offset: int | None = None,
    key: bytes | None = None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    on_unknown: Callable[[list[str]], None] | None = None,
) -> Event | DeadLetter:
    """Parse and validate one Kafka record; the event, or a dead letter saying why.

    Total: returns for any ``payload`` and ``key`` (the key is only copied into a dead
    letter, cut to :data:`DEAD_LETTER_KEY_BYTES`). The checks, cheapest first: size
    (``max_bytes``), strict UTF-8, nesting depth (:data:`MAX_DEPTH`, scanned without
    recursion), JSON without NaN/Infinity, overflowing floats, integers of more than 4,300
    digits or duplicate keys, no lone surrogates, an object with a readable
    ``schema_version`` (:data:`READABLE_SCHEMA_VERSIONS`), then the topic's model in strict
    mode (which bounds every number, string, list and event time). Fields the model does not
    define (a newer producer's optional ones) are ignored, and reported to ``on_unknown``.

    Args:
        topic: The topic read; it picks the model (:data:`TOPIC_EVENTS`).
        payload: The record's value (``None`` for a tombstone).
        partition: Where the record was read, copied into a dead letter.
        offset: Where the record was read, copied into a dead letter.
        key: The record's key, copied into a dead letter.
        max_bytes: Larger values are refused unparsed.
        on_unknown: Called with the dotted paths of the fields ignored, each once
            (``impressions[].x`` for a field of a list's items), once per record that has
            any; its own errors propagate (they are the caller's, not the record's).

    Returns:
        The validated event, or a :class:`DeadLetter` with ``kind``, ``reason``, a payload
        prefix and the record's topic/partition/offset.
    """
    model = TOPIC_EVENTS.get(topic)
    try:
        if model is None:
            raise _Rejected("unknown_topic", f"unknown topic {topic!r}")
        event, unknown = _parse(model, payload, max_bytes)
    except _Rejected as exc:
        kind, reason = exc.kind, exc.reason
    except (RecursionError, MemoryError) as exc:
        kind, reason = "undecodable", f"undecodable: {type(exc).__name__}"
    except Exception as exc:  # the reader must move on whatever the bytes: never raise
        kind, reason = "undecodable", f"undecodable: {type(exc).__name__}: {exc}"[:300]
    else:
        if unknown and on_unknown is not None:
            on_unknown(list(dict.fromkeys(unknown)))
        return event
    return dead_letter(topic, kind, reason, payload, partition=partition, offset=offset, key=key)


def decode_record(
    topic: str,
    record: Any,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    on_unknown: Callable[[list[str]], None] | None = None,
) -> Event | DeadLetter:
    """:func:`decode` of a consumed Kafka record (``value``, ``key``, ``partition``,
    ``offset``), so a dead letter always says where the record was read."""
    return decode(
        topic,
        record.value,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        max_bytes=max_bytes,
        on_unknown=on_unknown,
    )


def dead_letter(
    source: str,
    kind: str,
    reason: str,
    payload: Any = None,
    *,
    partition: int | None = None,
    offset: int | None = None,
    key: Any = None,
) -> DeadLetter:
    """A :class:`DeadLetter` for a record of ``source``, its payload and key cut to size.

    Args:
        source: The topic the record was read from.
        kind: One of :data:`DeadLetterKind`.
        reason: Why it was refused (one line).
        payload: The record's value (anything; only bytes are kept, as text).
        partition: Where the record was read.
        offset: Where the record was read.
        key: The record's key (anything; only bytes are kept, as text).
    """
    raw = payload if isinstance(payload, bytes | bytearray | memoryview) else None
    keyed = key if isinstance(key, bytes | bytearray | memoryview) else None
    return DeadLetter(
        source=source,
        reason=reason,
        kind=kind,
        payload=_text_prefix(raw, DEAD_LETTER_PAYLOAD_BYTES),
        payload_bytes=len(raw) if raw is not None else 0,
        partition=partition,
        offset=offset,
        key=None if keyed is None else _text_prefix(keyed, DEAD_LETTER_KEY_BYTES),
        failed_at=dt.datetime.now(dt.UTC),
    )
