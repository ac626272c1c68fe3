"""Event and lake-table schemas: the data contract, defined once.

Every event has a pydantic model (validated at each boundary: Kafka producers and consumers,
the landing job, the CLI) and an Arrow schema derived from that same model for the Parquet
lake, so the two can never drift. Kafka payloads are JSON objects carrying
``schema_version``; a payload that fails validation becomes a :class:`DeadLetter` with the
reason, never a crash and never a silent drop.

Timestamps are UTC ``datetime`` in Python and ``timestamp[us, UTC]`` in Arrow (Spark rejects
nanosecond Parquet timestamps).
"""

from __future__ import annotations

import datetime as dt
import json
import types
import typing
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from feedrank.config import HEADS

SCHEMA_VERSION = 1
Head = Literal["like", "reply", "retweet", "click", "negative"]
Device = Literal["mobile", "web", "tablet"]
DEVICES: tuple[str, ...] = typing.get_args(Device)
assert typing.get_args(Head) == HEADS

Int32 = Annotated[int, Field(ge=-(2**31), lt=2**31), "int32"]
Id = Annotated[int, Field(ge=0, lt=2**63)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]


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
    created_at: AwareDatetime
    tz_offset_hours: Int32 = Field(ge=-12, le=14)
    primary_device: Device
    is_author: bool


class Tweet(Event):
    """A posted tweet (topic ``tweets``, keyed by tweet id)."""

    tweet_id: Id
    author_id: Id
    created_at: AwareDatetime
    topic: Int32 = Field(ge=0)
    has_media: bool
    has_link: bool
    length: Int32 = Field(ge=1, le=280)
    language: str = Field(min_length=2, max_length=8)


class Follow(Event):
    """``follower_id`` started following ``followee_id`` (topic ``follows``, keyed by follower)."""

    follower_id: Id
    followee_id: Id
    created_at: AwareDatetime


class FeedRequest(Event):
    """A home-timeline fetch with its candidates (topic ``feed_requests``, keyed by user)."""

    request_id: str = Field(min_length=1, max_length=64)
    user_id: Id
    requested_at: AwareDatetime
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
    served_at: AwareDatetime
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
    engaged_at: AwareDatetime


class OracleRow(Event):
    """The simulator's true engagement probabilities of one impression. Never a feature."""

    request_id: str
    user_id: Id
    tweet_id: Id
    served_at: AwareDatetime
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
    model_version: str
    arm: str = "treatment"
    degraded: bool
    items: list[RankedItem]
    requested_at: AwareDatetime
    served_at: AwareDatetime
    deadline_at: AwareDatetime
    timings_ms: dict[str, float] = Field(default_factory=dict)
    # Answered after deadline_at (a miss is counted, never hidden).
    deadline_missed: bool = False


class DeadLetter(BaseModel):
    """A record that could not be accepted, with why (``<topic>.dlq`` or the lake's quarantine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    reason: str
    payload: str
    failed_at: AwareDatetime


# Topic name -> the event carried, and the lake table it lands in (same name).
TOPIC_EVENTS: dict[str, type[Event]] = {
    "tweets": Tweet,
    "follows": Follow,
    "feed_requests": FeedRequest,
    "impressions": ServedImpressions,
    "engagements": Engagement,
    "ranked_feeds": RankedFeed,
}
# Lake table name -> its row; a topic's table holds the ``lake_rows()`` of its events.
LAKE_TABLES: dict[str, type[Event]] = {
    "users": User,
    **{name: model for name, model in TOPIC_EVENTS.items() if name != "ranked_feeds"},
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


def decode(topic: str, payload: bytes | None) -> Event | DeadLetter:
    """Parse and validate one Kafka payload; return the event or a dead letter with why."""
    now = dt.datetime.now(dt.UTC)
    text = payload.decode("utf-8", errors="replace") if payload is not None else ""
    model = TOPIC_EVENTS.get(topic)
    if model is None:
        return DeadLetter(
            source=topic, reason=f"unknown topic {topic!r}", payload=text, failed_at=now
        )
    if payload is None:
        return DeadLetter(source=topic, reason="empty message", payload="", failed_at=now)
    try:
        raw = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return DeadLetter(source=topic, reason=f"not JSON: {exc}", payload=text, failed_at=now)
    if not isinstance(raw, dict):
        return DeadLetter(source=topic, reason="not a JSON object", payload=text, failed_at=now)
    if raw.get("schema_version") != SCHEMA_VERSION:
        reason = f"unsupported schema_version {raw.get('schema_version')!r}"
        return DeadLetter(source=topic, reason=reason, payload=text, failed_at=now)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        reason = f"{where}: {first['msg']} ({exc.error_count()} error(s))"
        return DeadLetter(source=topic, reason=reason, payload=text, failed_at=now)
