"""The Feast feature store of feedrank: configuration, object builders, apply and materialize.

Long because: the Feast object builders follow feature_spec one to one; config, apply and
materialize are a few functions each.

``feature_repo/`` declares the Feast objects in Feast's own idiom; every object there is
built by a helper of this module from :mod:`feedrank.feature_spec`, so feature names, dtypes
and TTLs have exactly one definition. The store's configuration (registry, online and offline
store) is derived from :class:`~feedrank.config.Settings`: profiles pick SQLite or Redis
online, file or Spark offline, and the registry and SQLite files live in the run folder
(``<paths.home>/feast_<online>_<offline>/``), never in the repository.

Feast is imported inside the functions so ``feedrank --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from feedrank import feature_spec as spec
from feedrank.config import PROJECT_ROOT, Settings, get_settings, redis_password
from feedrank.errors import FeedrankError

if TYPE_CHECKING:
    import feast
    from feast.repo_config import RepoConfig

TIMESTAMP_FIELD = "event_timestamp"
CREATED_FIELD = "created_timestamp"
# The checkout's Feast repository: the default of paths.feature_repo (settings.paths.feast_repo).
REPO_DIR = PROJECT_ROOT / "feature_repo"
UNKNOWN_ID = -1  # entity value used for the author/topic of a tweet the store does not know

# Settings the feature_repo modules build from while :func:`apply_repo` imports them; outside
# an apply they use the process settings.
_repo_settings: Settings | None = None


def repo_settings() -> Settings:
    """The settings feature_repo/ objects are built from (the applying store's, else global)."""
    return _repo_settings or get_settings()


def store_dir(settings: Settings) -> Path:
    """Run-folder directory holding this profile's registry and SQLite online store.

    One level below the run folder: Feast's file registry creates only its own parent.
    """
    feast_cfg = settings.feast
    return settings.paths.home / f"feast_{feast_cfg.online_store}_{feast_cfg.offline_store}"


def stream_views() -> list[str]:
    """Views fed by the engagements stream (PushSource-backed)."""
    return [v.name for v in spec.VIEWS.values() if v.kind == "stream"]


def push_source_name(view_name: str) -> str:
    """Name of the PushSource of a stream view."""
    return f"{view_name}_push"


# --------------------------------------------------------------------------- configuration


def feature_store_config(settings: Settings, *, with_secrets: bool = True) -> dict[str, Any]:
    """The resolved ``feature_store.yaml`` content for the settings' profile, as a dict.

    With ``with_secrets=False`` (a file on disk) the Redis password is the reference
    ``${FEEDRANK_REDIS__PASSWORD}``, which Feast expands from the environment when it loads
    the file.
    """
    folder = store_dir(settings)
    online: dict[str, Any]
    if settings.feast.online_store == "sqlite":
        online = {"type": "sqlite", "path": str(folder / "online.db")}
    else:
        password = redis_password(settings)
        if password and not with_secrets:
            password = "${FEEDRANK_REDIS__PASSWORD}"
        connection = settings.redis.url + (f",password={password}" if password else "")
        online = {"type": "redis", "connection_string": connection}
    offline: dict[str, Any]
    if settings.feast.offline_store == "file":
        # Parquet FileSources read by DuckDB. Feast's "file" store (dask) fails on multi-file
        # tables once a point-in-time join leaves rows unmatched ("Divisions calculation
        # failed for non-numeric column 'created_timestamp'"); DuckDB's as-of join does not.
        offline = {"type": "duckdb"}
    else:
        offline = {
            "type": "spark",
            "spark_conf": {
                "spark.master": settings.spark.master,
                "spark.sql.session.timeZone": "UTC",
                "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
                "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
                "spark.driver.memory": settings.spark.driver_memory,
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.ui.enabled": "false",
            },
        }
    return {
        "project": settings.feast.project,
        "provider": "local",
        "registry": {
            "registry_type": "file",
            "path": str(folder / "registry.db"),
            "cache_ttl_seconds": 60,
        },
        "online_store": online,
        "offline_store": offline,
        "entity_key_serialization_version": 3,
    }


def repo_config(settings: Settings | None = None) -> RepoConfig:
    """A Feast ``RepoConfig`` for the settings' profile (repo path: ``feature_repo/``)."""
    from feast.repo_config import RepoConfig

    settings = settings or get_settings()
    store_dir(settings).mkdir(parents=True, exist_ok=True)
    return RepoConfig(repo_path=settings.paths.feast_repo, **feature_store_config(settings))


def write_feature_store_yaml(settings: Settings | None = None) -> Path:
    """Write the resolved ``feature_store.yaml`` into the run folder and return its path.

    Use it with the Feast CLI: ``feast -c feature_repo -f <path> plan`` (or ``apply``); on
    Redis, with the password in the environment (``export FEEDRANK_REDIS__PASSWORD=$(cat
    var/secrets/redis.password)``): the file names it, never holds it.
    """
    settings = settings or get_settings()
    path = store_dir(settings) / "feature_store.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(feature_store_config(settings, with_secrets=False), sort_keys=False)
    )
    return path


def feature_store(settings: Settings | None = None) -> feast.FeatureStore:
    """A Feast ``FeatureStore`` for the settings' profile (registry in the run folder)."""
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings or get_settings()))


@contextlib.contextmanager
def _repo_import_context(settings: Settings) -> Iterator[None]:
    """cwd = feature_repo/, modules re-imported fresh, built from ``settings``."""
    global _repo_settings
    previous_cwd = os.getcwd()
    repo_dir = settings.paths.feast_repo
    stale = {p.stem for p in repo_dir.glob("*.py")}
    for name in stale:
        sys.modules.pop(name, None)
    sys.path.insert(0, str(repo_dir))
    _repo_settings = settings
    try:
        os.chdir(repo_dir)
        yield
    finally:
        os.chdir(previous_cwd)
        _repo_settings = None
        with contextlib.suppress(ValueError):
            sys.path.remove(str(repo_dir))
        for name in stale:
            sys.modules.pop(name, None)


def apply_repo(settings: Settings | None = None, *, quiet: bool = True) -> None:
    """Register feature_repo/ in the profile's store: the same steps as ``feast apply``.

    Reads the repository the way the Feast CLI does (``.feastignore`` honoured), applies new
    and changed objects, deletes objects no longer declared and creates online tables.
    """
    from feast.repo_operations import _get_repo_contents, apply_total_with_repo_instance

    settings = settings or get_settings()
    config = repo_config(settings)
    with _repo_import_context(settings):
        repo = _get_repo_contents(settings.paths.feast_repo, config.project, config)
        store = feature_store(settings)
        sink = open(os.devnull, "w") if quiet else contextlib.nullcontext(sys.stdout)  # noqa: SIM115
        with sink as out, contextlib.redirect_stdout(out):
            apply_total_with_repo_instance(
                store, config.project, store.registry, repo, skip_source_validation=True
            )


def materialize(
    settings: Settings | None = None,
    *,
    end: dt.datetime,
    start: dt.datetime | None = None,
    views: Sequence[str] | None = None,
    include_stream_views: bool = False,
) -> list[str]:
    """Load feature values from the offline tables into the online store.

    With ``start`` the window ``[start, end]`` is materialized (re-running it writes the same
    values: idempotent); without it each view continues from where its last run ended
    (``materialize-incremental``). Stream views are skipped unless asked for: their online
    values come from the push stream and an offline backfill would overwrite fresher counts.

    Returns:
        The names of the materialized views.
    """
    settings = settings or get_settings()
    end = as_utc(end)
    names = (
        list(views)
        if views
        else [v.name for v in spec.VIEWS.values() if include_stream_views or v.kind != "stream"]
    )
    unknown = sorted(set(names) - set(spec.VIEWS))
    if unknown:
        raise FeedrankError(f"unknown feature view(s): {', '.join(unknown)}")
    if start is not None and as_utc(start) >= end:
        raise FeedrankError(
            f"--start {as_utc(start).isoformat()} must be before --end {end.isoformat()}"
        )
    registry = store_dir(settings) / "registry.db"
    if not registry.is_file():
        raise FeedrankError(f"no Feast registry at {registry}: run `feedrank feast-apply` first")
    store = feature_store(settings)
    with warnings.catch_warnings():
        # dask (the file offline store) warns about pandas downcasting on every view.
        warnings.simplefilter("ignore", FutureWarning)
        if start is None:
            store.materialize_incremental(end_date=end, feature_views=names)
        else:
            store.materialize(start_date=as_utc(start), end_date=end, feature_views=names)
    return names


def materialize_as_of(
    settings: Settings, as_of: dt.datetime, views: Sequence[str] | None = None
) -> None:
    """Online store = the values valid at ``as_of``: each view (default: every view, stream
    views included) is materialized over ``[as_of - ttl, as_of]`` (Feast's window is
    inclusive at both ends).

    Into an empty online store this is Feast's point-in-time rule at ``as_of`` — per entity
    the latest row with ``event_timestamp <= as_of`` within the view's TTL — which the
    training-data join applies offline. Feast's online read applies no TTL, so on a store that
    already holds values, an entity with no row in the window keeps what an earlier run wrote.
    """
    by_ttl: dict[int, list[str]] = {}
    for name in views or spec.VIEWS:
        by_ttl.setdefault(spec.VIEWS[name].ttl_days, []).append(name)
    for ttl_days, names in sorted(by_ttl.items()):
        materialize(settings, start=as_of - dt.timedelta(days=ttl_days), end=as_of, views=names)


def as_utc(ts: dt.datetime) -> dt.datetime:
    return ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts.astimezone(dt.UTC)


# --------------------------------------------------------------- builders for feature_repo/

_FEAST_DTYPES = {"int64": "Int64", "float64": "Float64"}
_VALUE_TYPES = {"int64": "INT64", "float64": "DOUBLE"}


def _feast_type(dtype: str) -> Any:
    from feast import types

    return getattr(types, _FEAST_DTYPES[dtype])


def build_entity(name: str, join_key: str | None = None) -> feast.Entity:
    """A Feast Entity (one int64 join key) from ``feature_spec.ENTITIES[name]``.

    Feast entities have a single join key, so a pair entity such as ``user_topic`` is served
    by a view keyed by two entities; ``join_key`` picks the pair's key that has no entity of
    its own (``topic``), and that key becomes the entity's name.
    """
    from feast import Entity, ValueType

    entity = spec.ENTITIES[name]
    if join_key is None:
        if len(entity.join_keys) != 1:
            raise ValueError(f"{name} has join keys {entity.join_keys}: pass join_key")
        return Entity(
            name=entity.name,
            join_keys=list(entity.join_keys),
            value_type=ValueType.INT64,
            description=entity.description,
        )
    if join_key not in entity.join_keys:
        raise ValueError(f"{join_key} is not a join key of {name}")
    return Entity(
        name=join_key,
        join_keys=[join_key],
        value_type=ValueType.INT64,
        description=f"The {join_key} key of the {name} pair: {entity.description}",
    )


def feature_table_path(view_name: str, settings: Settings | None = None) -> Path:
    """Folder of the Parquet feature table a Spark job writes for ``view_name``."""
    settings = settings or repo_settings()
    return settings.paths.features / view_name


def build_batch_source(view_name: str) -> feast.DataSource:
    """The offline source of one view: its Parquet table (FileSource, or SparkSource)."""
    settings = repo_settings()
    view = spec.VIEWS[view_name]
    # The Spark job fills this folder; creating it lets a fresh clone apply without warnings.
    feature_table_path(view_name, settings).mkdir(parents=True, exist_ok=True)
    common = {
        "name": f"{view_name}_source",
        "path": str(feature_table_path(view_name, settings)),
        "timestamp_field": TIMESTAMP_FIELD,
        "created_timestamp_column": CREATED_FIELD,
        "description": f"Parquet table of {view_name} ({view.kind}).",
    }
    if settings.feast.offline_store == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
            SparkSource,
        )

        return SparkSource(file_format="parquet", **common)
    from feast import FileSource

    return FileSource(file_format=_parquet(), **common)


def _parquet() -> Any:
    from feast.data_format import ParquetFormat

    return ParquetFormat()


def build_push_source(view_name: str) -> feast.PushSource:
    """The PushSource of a stream view, with its offline history as batch source."""
    from feast import PushSource

    if spec.VIEWS[view_name].kind != "stream":
        raise ValueError(f"{view_name} is not a stream view")
    return PushSource(name=push_source_name(view_name), batch_source=build_batch_source(view_name))


def view_schema(view_name: str) -> list[Any]:
    """Feast fields of a view: entity join keys, then its features in contract order."""
    from feast import Field
    from feast.types import Int64

    view = spec.VIEWS[view_name]
    keys = [Field(name=k, dtype=Int64) for k in spec.ENTITIES[view.entity].join_keys]
    feats = [
        Field(name=f.name, dtype=_feast_type(f.dtype), description=f.description)
        for f in view.features
    ]
    return keys + feats


def build_feature_view(
    view_name: str, entities: Sequence[feast.Entity], source: feast.DataSource
) -> feast.FeatureView:
    """The FeatureView of ``feature_spec.VIEWS[view_name]`` over ``source``.

    ``entities`` must cover exactly the join keys of the view's spec entity, in order.
    """
    from feast import FeatureView

    view = spec.VIEWS[view_name]
    keys = tuple(e.join_key for e in entities)
    if keys != spec.ENTITIES[view.entity].join_keys:
        raise ValueError(
            f"{view_name} is keyed by {spec.ENTITIES[view.entity].join_keys}, not {keys}"
        )
    return FeatureView(
        name=view.name,
        entities=list(entities),
        ttl=dt.timedelta(days=view.ttl_days),
        schema=view_schema(view_name),
        source=source,
        online=True,
        description=view.description,
        tags={"kind": view.kind, "in_model": str(view.in_model).lower()},
    )


# Inputs of the context view besides the request fields, and the views that carry them.
CONTEXT_INPUTS: dict[str, str] = {
    "tweet_created_ts": "tweet_attributes",
    "user_active_hour_peak": "user_engagement_daily",
}


def build_request_source() -> feast.RequestSource:
    """The request-time fields (``feature_spec.REQUEST_FIELDS``)."""
    from feast import Field, RequestSource

    return RequestSource(
        name="feed_request",
        schema=[Field(name=f.name, dtype=_feast_type(f.dtype)) for f in spec.REQUEST_FIELDS],
        description="Fields known only when the feed is requested.",
    )


def context_schema() -> list[Any]:
    """Output fields of the ``request_context`` view (Float64: python-mode ODFV floats)."""
    from feast import Field
    from feast.types import Float64

    # No descriptions: Feast compares these fields, descriptions included, with the ones it
    # infers by running the function, which have none.
    return [Field(name=f.name, dtype=Float64) for f in spec.CONTEXT_FEATURES]


def context_columns(inputs: dict[str, list]) -> dict[str, list]:
    """Body of the python-mode ODFV: columns in, context columns out (lists of floats).

    Missing inputs (``None``: unknown tweet or user) become NaN, as in
    :func:`feedrank.context.context_features`.
    """
    import numpy as np

    from feedrank.context import context_features

    def column(name: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in inputs[name]], dtype=np.float64)

    out = context_features(
        column("request_ts"),
        column("device_code"),
        column("tweet_created_ts"),
        column("user_active_hour_peak"),
    )
    n = len(inputs["request_ts"])
    return {f.name: np.broadcast_to(out[f.name], (n,)).tolist() for f in spec.CONTEXT_FEATURES}


def build_feature_service(
    views: Sequence[feast.FeatureView], context_view: feast.OnDemandFeatureView
) -> feast.FeatureService:
    """``ranker_v1``: exactly ``model_features()``, in that order (views' order = contract)."""
    from feast import FeatureService

    by_name = {v.name: v for v in views}
    model_views = [by_name[v.name] for v in spec.VIEWS.values() if v.in_model]
    if context_view.name != spec.CONTEXT_VIEW:
        raise ValueError(f"context view must be named {spec.CONTEXT_VIEW}")
    service = FeatureService(
        name=spec.FEATURE_SERVICE,
        features=[*model_views, context_view],
        description="Inputs of the ranker heads, in the model's column order.",
        tags={"contract_sha256": spec.Contract().sha256},
    )
    names = [f.name for p in service.feature_view_projections for f in p.features]
    if names != spec.model_features():
        raise ValueError("ranker_v1 does not list model_features() in order")
    return service
