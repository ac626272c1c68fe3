"""The feature contract, declared once as plain data.

``feature_repo/`` builds its Feast entities, sources, feature views and the ``ranker_v1``
FeatureService from these declarations; the Spark feature jobs must produce exactly these
columns (checked by tests); training orders model inputs by :func:`model_features`; the
serving fast path reads the same names. Nothing here imports Feast, so Spark workers and the
scorer can import it cheaply.

Grain and window are in every name (``user_like_rate_7d``). Daily views are snapshots: the
snapshot of day D is computed from events strictly before D+1 00:00 UTC and carries
``event_timestamp`` = D+1 00:00 UTC, the moment it becomes knowable. Missing values (unknown
entity, no snapshot within the TTL) are ``NaN`` for the model: XGBoost routes them natively,
and offline and online paths agree on it. Views whose entities can leave them (``leaves``)
have no zero state: a stream counter with no positive engagement in its longest window, a
user×author or user×topic pair with no activity in 28 days, a tweet older than its 28-day
window, is missing. The snapshot or step at which it leaves is a tombstone row (every
feature null), materialized or pushed online like any other row, so that an entity that left
longer than the TTL ago reads the same in training (row dropped by the TTL) as online
(Feast's online read ignores the TTL, and would serve its last values forever).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from feedrank.config import HEADS

DType = Literal["int64", "float64"]
WINDOWS_DAYS: tuple[int, ...] = (1, 7, 28)
TARGET_ENCODING_SMOOTHING = 20.0  # RecSys 2020 winners' smoothing for target encodings.


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: DType
    description: str


@dataclass(frozen=True)
class Entity:
    name: str
    join_keys: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class View:
    """One feature view: its entity, its fields and how its values arrive."""

    name: str
    entity: str
    kind: Literal["daily", "event", "stream"]
    ttl_days: int
    description: str
    features: tuple[Feature, ...]
    in_model: bool = True
    # An entity leaves the view when its activity window empties (a quiet user×author pair,
    # a tweet past its 28 days, a stream counter back to zero): the snapshot or step at which
    # it leaves is a tombstone row, every feature null (see the module docstring).
    leaves: bool = False

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def _f(name: str, dtype: DType, description: str) -> Feature:
    return Feature(name, dtype, description)


ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in (
        Entity("user", ("user_id",), "A timeline reader."),
        Entity("author", ("author_id",), "A user who posts tweets."),
        Entity("tweet", ("tweet_id",), "A candidate tweet."),
        Entity("user_author", ("user_id", "author_id"), "A reader-author pair (real graph)."),
        Entity("user_topic", ("user_id", "topic"), "A reader-topic pair."),
    )
}

_user_features = (
    *(
        _f(f"user_impressions_{w}d", "int64", f"Impressions seen in the last {w} days.")
        for w in WINDOWS_DAYS
    ),
    *(
        _f(f"user_{h}_rate_{w}d", "float64", f"{h} engagements per impression, last {w} days.")
        for w in WINDOWS_DAYS
        for h in HEADS
    ),
    _f("user_requests_7d", "int64", "Feed requests in the last 7 days."),
    _f("user_active_hour_peak", "int64", "UTC hour with most requests in 28 days (-1: none)."),
    _f("user_following_count", "int64", "Accounts followed."),
    *(
        _f(f"user_te_{h}", "float64", f"Smoothed target encoding of user for {h}, all history.")
        for h in HEADS
    ),
)
_author_features = (
    _f("author_followers", "int64", "Followers."),
    _f("author_tweets_7d", "int64", "Tweets posted in the last 7 days."),
    _f("author_impressions_7d", "int64", "Impressions of the author's tweets, last 7 days."),
    *(
        _f(f"author_{h}_rate_7d", "float64", f"{h} received per impression, last 7 days.")
        for h in HEADS
    ),
    *(
        _f(f"author_te_{h}", "float64", f"Smoothed target encoding of author for {h}.")
        for h in HEADS
    ),
)
_tweet_attribute_features = (
    _f(
        "tweet_created_ts",
        "float64",
        "Creation time, seconds since the epoch (a lookup column, not learned: NOT_LEARNED).",
    ),
    _f("tweet_topic", "int64", "Topic id."),
    _f("tweet_has_media", "int64", "1 if the tweet carries media."),
    _f("tweet_has_link", "int64", "1 if the tweet carries a link."),
    _f("tweet_length", "int64", "Characters."),
)
_tweet_stats_features = (
    _f("tweet_impressions_total", "int64", "Impressions so far (daily snapshot)."),
    *(_f(f"tweet_{h}_total", "int64", f"{h} engagements so far (daily snapshot).") for h in HEADS),
)
_user_author_features = (
    _f("ua_follows", "int64", "1 if the user follows the author."),
    _f("ua_impressions_28d", "int64", "Author's tweets seen by the user, last 28 days."),
    *(
        _f(f"ua_{h}_count_28d", "int64", f"{h} engagements with the author, last 28 days.")
        for h in HEADS
    ),
    _f("ua_days_since_last_engagement", "float64", "Days since any engagement (NaN: never)."),
    _f("ua_te_like", "float64", "Smoothed target encoding of the pair for like."),
    _f("ua_te_click", "float64", "Smoothed target encoding of the pair for click."),
)
_user_topic_features = (
    _f("ut_impressions_28d", "int64", "Tweets of the topic seen, last 28 days."),
    _f("ut_engagement_rate_28d", "float64", "Positive engagements per impression, 28 days."),
    _f("ut_like_rate_28d", "float64", "Likes per impression of the topic, 28 days."),
    _f("ut_click_rate_28d", "float64", "Clicks per impression of the topic, 28 days."),
)
_tweet_realtime_features = (
    _f(
        "tweet_engagements_30m",
        "int64",
        "Positive engagements in the last 30 minutes (missing: none in the last hour).",
    ),
    _f("tweet_engagements_1h", "int64", "Positive engagements in the last hour (missing: none)."),
)
_user_realtime_features = (
    _f(
        "user_engagements_1h",
        "int64",
        "The user's positive engagements in the last hour (missing: none).",
    ),
)
_tweet_author_features = (
    _f("tweet_author_id", "int64", "The tweet's author (a lookup key for serving, not an input)."),
)

VIEWS: dict[str, View] = {
    v.name: v
    for v in (
        View(
            "user_engagement_daily",
            "user",
            "daily",
            2,
            "Per-user activity and engagement rates by head over 1/7/28 days.",
            _user_features,
        ),
        View(
            "author_stats_daily",
            "author",
            "daily",
            2,
            "Per-author audience and engagement received.",
            _author_features,
        ),
        View(
            "tweet_attributes",
            "tweet",
            "event",
            60,
            "Static tweet attributes, known from the moment it is posted.",
            _tweet_attribute_features,
        ),
        View(
            "tweet_stats_daily",
            "tweet",
            "daily",
            2,
            "Engagement a tweet has collected so far.",
            _tweet_stats_features,
            leaves=True,
        ),
        View(
            "user_author_affinity_daily",
            "user_author",
            "daily",
            2,
            "Twitter's real graph: a reader's history with an author.",
            _user_author_features,
            leaves=True,
        ),
        View(
            "user_topic_affinity_daily",
            "user_topic",
            "daily",
            2,
            "A reader's history with a topic.",
            _user_topic_features,
            leaves=True,
        ),
        View(
            "tweet_realtime",
            "tweet",
            "stream",
            1,
            "Intraday tweet counters pushed from the engagements stream.",
            _tweet_realtime_features,
            leaves=True,
        ),
        View(
            "user_realtime",
            "user",
            "stream",
            1,
            "Intraday user counters pushed from the engagements stream.",
            _user_realtime_features,
            leaves=True,
        ),
        # Not a model input: serving resolves each candidate's author (and so the author,
        # user×author rows) from it. Same rows and timestamps as tweet_attributes.
        View(
            "tweet_authors",
            "tweet",
            "event",
            60,
            "Who posted each tweet, known from the moment it is posted.",
            _tweet_author_features,
            in_model=False,
        ),
    )
}

# Request-time context (Feast on-demand view ``request_context`` over a RequestSource).
REQUEST_FIELDS: tuple[Feature, ...] = (
    _f("request_ts", "float64", "Request time, seconds since the epoch."),
    _f("device_code", "int64", "Index of the request's device in feedrank.schemas.DEVICES."),
)
CONTEXT_FEATURES: tuple[Feature, ...] = (
    _f("ctx_hour", "float64", "UTC hour of the request."),
    _f("ctx_is_weekend", "float64", "1 on Saturday and Sunday."),
    _f("ctx_days_to_holiday", "float64", "Days to the nearest holiday in the calendar."),
    _f("ctx_device_code", "float64", "Device index (mobile, web, tablet)."),
    _f("ctx_tweet_age_hours", "float64", "Tweet age at request time, hours."),
    _f("ctx_hours_from_user_peak", "float64", "Circular hour distance to the user's peak."),
)
CONTEXT_VIEW = "request_context"
FEATURE_SERVICE = "ranker_v1"
# Views feeding the light ranker (a few cheap features) and the model heads.
LIGHT_RANKER_FEATURES: tuple[str, ...] = (
    "ua_follows",
    "author_like_rate_7d",
    "user_like_rate_7d",
    "ut_engagement_rate_28d",
    "ctx_tweet_age_hours",
)


# Columns of the model matrix the heads never learn from. Serving and the context read
# ``tweet_created_ts`` from the matrix (the tweet's age, the chronological order), but an
# absolute time means nothing on a day the training window did not contain: trained on two
# days, a tree files every newer tweet with the newest it saw (docs/quality.md, "Every day the
# same model"); ``ctx_tweet_age_hours`` carries what it knows. Training masks these columns to
# missing, so no split can use them (tests/training/test_training_day_ahead.py checks it).
NOT_LEARNED: tuple[str, ...] = ("tweet_created_ts",)


def model_features() -> list[str]:
    """The ordered input columns of ``ranker_v1``: every view's features, then context."""
    names = [f.name for v in VIEWS.values() if v.in_model for f in v.features]
    names += [f.name for f in CONTEXT_FEATURES]
    if len(names) != len(set(names)):
        raise ValueError("duplicate feature names in the contract")
    return names


def learned_features() -> list[str]:
    """The columns of :func:`model_features` the heads may split on (all but NOT_LEARNED)."""
    return [name for name in model_features() if name not in NOT_LEARNED]


def feature_dtype(name: str) -> DType:
    """The declared dtype of one model feature; ``ValueError`` if it is not in the contract."""
    for view in VIEWS.values():
        for feat in view.features:
            if feat.name == name:
                return feat.dtype
    for feat in CONTEXT_FEATURES:
        if feat.name == name:
            return feat.dtype
    raise ValueError(f"{name} missing from schema")


@dataclass(frozen=True)
class Contract:
    """Ordered features plus a stable hash, as recorded in a model's metadata.

    The hash covers which columns are not learned too: a model that learned from a column
    this build masks means something else and is refused.
    """

    feature_service: str = FEATURE_SERVICE
    features: tuple[str, ...] = field(default_factory=lambda: tuple(model_features()))
    not_learned: tuple[str, ...] = NOT_LEARNED

    @property
    def sha256(self) -> str:
        import hashlib

        text = self.feature_service + "\n" + "\n".join(self.features)
        if self.not_learned:
            text += "\nnot learned:\n" + "\n".join(self.not_learned)
        return hashlib.sha256(text.encode()).hexdigest()


# --- Training examples (output of ``feedrank training-data``, input of ``feedrank train``) ---
# Layout: <paths.training>/<run_id>/{train,validation}/part-*.parquet + manifest.json.
# manifest.json keys: rows{train,validation}, positives{split:{head:n}}, keep_rates{head:w}
# (effective per-head negative keep-rate for recalibration), negative_keep_rate,
# attribution_window_s, train_dates, validation_dates, input_partitions, features,
# feature_service, schema_sha256.
TRAINING_MANIFEST = "manifest.json"
ID_COLUMNS: tuple[str, ...] = (
    "request_id",
    "user_id",
    "tweet_id",
    "author_id",
    "served_at",
    "position",
)
LABEL_COLUMNS: tuple[str, ...] = tuple(f"label_{h}" for h in HEADS)
KEEP_PROB_COLUMN = "keep_prob"  # probability the row survived negative downsampling


def training_columns() -> list[str]:
    """Every column of a training-examples file, in order."""
    return [*ID_COLUMNS, *LABEL_COLUMNS, KEEP_PROB_COLUMN, *model_features()]
