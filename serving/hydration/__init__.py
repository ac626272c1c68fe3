"""Feature hydration for the scorer: one request's model matrix from Feast's online store.

Two paths give the same matrix (``len(tweet_ids) × len(model_features())``, float64, NaN for
anything missing):

* :func:`online_features_matrix` — the reference: ``FeatureStore.get_online_features`` with
  the ``ranker_v1`` FeatureService (≈0.4–2.5 s for 1,000 candidates on this machine).
* :class:`FeatureHydrator` — the fast path. It reads the very rows Feast wrote (same tables,
  Redis hashes, entity-key serialization and value protos), and keeps the views that change
  only on materialization (``daily`` and ``event`` kinds) decoded in memory as NumPy matrices,
  reloaded when the registry records a new materialization (or ``apply``). The pushed
  real-time views (``stream`` kind) follow every write: on SQLite they are rescanned whenever
  ``PRAGMA data_version`` says another connection committed (a push or a materialization);
  on Redis they are mirrored in memory and kept current by Redis keyspace notifications
  (:class:`RedisStreamMirror`: each written key is re-read within milliseconds of the
  write; :meth:`FeatureHydrator.sync` waits until every earlier write is in). Where the
  server refuses to enable notifications, they are read live on every request instead (one
  Lua ``HMGET`` loop, one round trip).
  Request context is computed by :func:`feedrank.context.context_features`, the function the
  on-demand view runs.

Documented defaults: an unknown tweet has author and topic ``-1`` (so its author, user×author
and user×topic features are NaN), any entity absent from a view gives NaN for that view's
features, and online values are served regardless of the view's TTL, as Feast does online.

One module per part: :mod:`.feast_codec`, :mod:`.online_readers`, :mod:`.hydrator`,
:mod:`.feast_reference`; the benchmark is :mod:`serving.hydration_bench`.
"""

from serving.hydration.feast_codec import EntityKeyCodec, decode_value, device_code
from serving.hydration.feast_reference import online_author_ids, online_features_matrix
from serving.hydration.hydrator import FeatureHydrator

__all__ = [
    "EntityKeyCodec",
    "FeatureHydrator",
    "decode_value",
    "device_code",
    "online_author_ids",
    "online_features_matrix",
]
