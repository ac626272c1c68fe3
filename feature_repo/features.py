"""Feature views: names, dtypes and TTLs come from feedrank.feature_spec.VIEWS."""

from data_sources import (
    author_stats_daily_source,
    tweet_attributes_source,
    tweet_authors_source,
    tweet_realtime_push,
    tweet_stats_daily_source,
    user_author_affinity_daily_source,
    user_engagement_daily_source,
    user_realtime_push,
    user_topic_affinity_daily_source,
)
from entities import author, topic, tweet, user

from feedrank.featurestore import build_feature_view

# Per-user activity and engagement rates by head over 1/7/28 days.
user_engagement_daily = build_feature_view(
    "user_engagement_daily", [user], user_engagement_daily_source
)

# Per-author audience and engagement received over 7 days.
author_stats_daily = build_feature_view("author_stats_daily", [author], author_stats_daily_source)

# Static tweet attributes, known from the moment the tweet is posted.
tweet_attributes = build_feature_view("tweet_attributes", [tweet], tweet_attributes_source)

# Engagement a tweet has collected so far.
tweet_stats_daily = build_feature_view("tweet_stats_daily", [tweet], tweet_stats_daily_source)

# Twitter's real graph: a reader's 28-day history with an author.
user_author_affinity_daily = build_feature_view(
    "user_author_affinity_daily", [user, author], user_author_affinity_daily_source
)

# A reader's 28-day history with a topic.
user_topic_affinity_daily = build_feature_view(
    "user_topic_affinity_daily", [user, topic], user_topic_affinity_daily_source
)

# Tweet engagements in the last 30 minutes and hour, pushed from the stream.
tweet_realtime = build_feature_view("tweet_realtime", [tweet], tweet_realtime_push)

# The user's engagements in the last hour, pushed from the stream.
user_realtime = build_feature_view("user_realtime", [user], user_realtime_push)

# Who posted each tweet: a serving lookup key, not a model input.
tweet_authors = build_feature_view("tweet_authors", [tweet], tweet_authors_source)
