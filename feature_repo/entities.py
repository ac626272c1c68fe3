"""Entities: the keys features are looked up by (declared in feedrank.feature_spec.ENTITIES).

A Feast entity has one join key; the user×author and user×topic pairs are views keyed by two
entities (``user`` + ``author``, ``user`` + ``topic``).
"""

from feedrank.featurestore import build_entity

# A timeline reader.
user = build_entity("user")

# A user who posts tweets.
author = build_entity("author")

# A candidate tweet.
tweet = build_entity("tweet")

# A tweet topic: the second key of the reader-topic pair.
topic = build_entity("user_topic", join_key="topic")
