"""On-demand context features, computed at request time by feedrank.context."""

from feast import RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from features import tweet_attributes, user_engagement_daily

from feedrank.featurestore import build_request_source, context_schema

# The request's time and device, known only when the feed is requested.
feed_request: RequestSource = build_request_source()


# Context of a (request, candidate) pair: calendar, device, tweet age, distance to the
# user's peak hour. Feast re-creates this function from its source text when serving, so
# the import lives inside it.
@on_demand_feature_view(
    sources=[
        feed_request,
        tweet_attributes[["tweet_created_ts"]],
        user_engagement_daily[["user_active_hour_peak"]],
    ],
    schema=context_schema(),
    mode="python",
)
def request_context(inputs: dict[str, list]) -> dict[str, list]:
    from feedrank.featurestore import context_columns

    return context_columns(inputs)
