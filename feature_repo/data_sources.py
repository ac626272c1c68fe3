"""Sources: the Parquet feature tables the Spark jobs write under <paths.features>/<view>/.

Each table carries the entity join keys, ``event_timestamp`` (when the values became
knowable), ``created_timestamp`` and the view's features exactly as in feedrank.feature_spec.
"""

from feedrank.featurestore import build_batch_source, build_push_source

# Daily snapshot of each user's activity and engagement rates.
user_engagement_daily_source = build_batch_source("user_engagement_daily")

# Daily snapshot of each author's audience and engagement received.
author_stats_daily_source = build_batch_source("author_stats_daily")

# Tweet attributes, one row per tweet at its creation time.
tweet_attributes_source = build_batch_source("tweet_attributes")

# Tweet authorship, one row per tweet at its creation time.
tweet_authors_source = build_batch_source("tweet_authors")

# Daily snapshot of each tweet's engagement so far.
tweet_stats_daily_source = build_batch_source("tweet_stats_daily")

# Daily snapshot of reader-author history.
user_author_affinity_daily_source = build_batch_source("user_author_affinity_daily")

# Daily snapshot of reader-topic history.
user_topic_affinity_daily_source = build_batch_source("user_topic_affinity_daily")

# Real-time tweet counters pushed by `feedrank stream-features` (batch: intraday history).
tweet_realtime_push = build_push_source("tweet_realtime")

# Real-time user counters pushed by `feedrank stream-features` (batch: intraday history).
user_realtime_push = build_push_source("user_realtime")
