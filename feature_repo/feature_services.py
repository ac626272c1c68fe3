"""Feature services: one per model version; the model's column order is model_features()."""

from features import (
    author_stats_daily,
    tweet_attributes,
    tweet_realtime,
    tweet_stats_daily,
    user_author_affinity_daily,
    user_engagement_daily,
    user_realtime,
    user_topic_affinity_daily,
)
from on_demand_features import request_context

from feedrank.featurestore import build_feature_service

# Inputs of the ranker heads, version 1 (checked against feature_spec.model_features()).
ranker_v1 = build_feature_service(
    [
        user_engagement_daily,
        author_stats_daily,
        tweet_attributes,
        tweet_stats_daily,
        user_author_affinity_daily,
        user_topic_affinity_daily,
        tweet_realtime,
        user_realtime,
    ],
    request_context,
)
