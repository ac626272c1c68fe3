"""MLflow: the training runs, the registered model versions and the ``champion`` alias.

Long because: runs, versions and the alias share one client, its error mapping and its setup.

Embedded by default: a SQLite backend and a file artifact store under ``<paths.home>/mlflow``
(``mlflow.db``, ``artifacts/``), opened in-process, no server to run; ``mlflow.tracking_uri``
points every component at a shared tracking server instead. ``make mlflow-ui`` browses
the store on 127.0.0.1.

* A training run (``feedrank train``) logs its parameters, validation metrics, the training
  data's manifest and the model folder (artifact ``model``); ``feedrank evaluate`` adds the
  per-head metrics beside the oracle and the knowable ceiling, the plots and the report.
* The promotion gate registers the model folder of a run as a version of
  ``mlflow.model_name`` (tag ``feedrank_version``: the name impressions carry) and moves the
  ``champion`` alias to it; the version remembers the champion it replaced
  (tag ``previous_champion``), which is what ``feedrank promote --rollback`` moves back to.
* Serving asks which version the alias names and loads that version's folder through
  :func:`feedrank.model_files.load_model` (checksums, feature contract): a local copy when
  there is one, else downloaded from the run's artifacts.

``mlflow`` is imported only inside functions (it takes seconds), and the environment below is
set first: no telemetry, no progress bars, MLflow's loggers through ours, bounded retries.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.model_files import METADATA_FILE, validate_version, version_dir

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger("feedrank.tracking")

CHAMPION = "champion"
VERSION_TAG = "feedrank_version"
PREVIOUS_TAG = "previous_champion"
MODEL_ARTIFACT = "model"
# No network but the tracking server: no telemetry, no progress bars on stderr, MLflow's
# records through the process's own logging; a shared server that is down fails in seconds.
MLFLOW_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_CONFIGURE_LOGGING": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class TrackingUnavailable(FeedrankError):
    """The tracking store did not answer (a shared server down, an unreadable database)."""


def store_dir(settings: Settings) -> Path:
    """The embedded store's folder, ``<paths.home>/mlflow``."""
    return settings.paths.home / "mlflow"


def tracking_uri(settings: Settings) -> str:
    """``mlflow.tracking_uri``, or the embedded SQLite database's ``sqlite:///`` URI."""
    if settings.mlflow.tracking_uri:
        return settings.mlflow.tracking_uri
    return f"sqlite:///{(store_dir(settings) / 'mlflow.db').resolve()}"


def artifact_root(settings: Settings) -> str | None:
    """Where the embedded store keeps artifacts (``None``: the shared server decides)."""
    if settings.mlflow.tracking_uri:
        return None
    return (store_dir(settings) / "artifacts").resolve().as_uri()


def client(settings: Settings) -> MlflowClient:
    """An ``MlflowClient`` on the configured store (created on first use when embedded)."""
    if not settings.mlflow.tracking_uri:
        store_dir(settings).mkdir(parents=True, exist_ok=True)
    return _client(tracking_uri(settings))


@functools.lru_cache(maxsize=8)
def _client(uri: str) -> MlflowClient:
    """One client per store and process (serving asks every second)."""
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # SQLAlchemy's deprecation of a loader MLflow's store uses: not ours to act on.
    warnings.filterwarnings("ignore", message=r".*``noload`` loader strategy")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _not_found(exc: Exception) -> bool:
    """MLflow's "no such thing" (a missing alias is INVALID_PARAMETER_VALUE, "... not found")."""
    code = getattr(exc, "error_code", None)
    return code == "RESOURCE_DOES_NOT_EXIST" or (
        code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)
    )


def _unavailable(settings: Settings, exc: Exception) -> TrackingUnavailable:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return TrackingUnavailable(f"MLflow store {tracking_uri(settings)} unavailable: {first}")


def experiment_id(settings: Settings, mlflow_client: MlflowClient) -> str:
    """The id of ``mlflow.experiment``, created (artifacts under the run folder) if new."""
    found = mlflow_client.get_experiment_by_name(settings.mlflow.experiment)
    if found is not None:
        return found.experiment_id
    return mlflow_client.create_experiment(
        settings.mlflow.experiment, artifact_location=artifact_root(settings)
    )


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value


def flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """``{"like": {"auc": 0.7}}`` → ``{"like.auc": 0.7}`` (MLflow keys are flat)."""
    out: dict[str, Any] = {}
    _flat("", record, out)
    return out


def log_to_run(
    settings: Settings,
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    artifacts: Mapping[str, Path] | None = None,
) -> None:
    """Log to an existing run; nested mappings are flattened, non-numeric metrics dropped.

    Args:
        artifacts: ``{artifact folder: local file or folder}``.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.time import get_current_time_millis

    mlflow_client = client(settings)
    now = get_current_time_millis()
    numbers = {
        k: float(v)
        for k, v in flatten(metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v  # not NaN
    }
    mlflow_client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in sorted(numbers.items())],
        params=[Param(k, str(v)[:6000]) for k, v in sorted(flatten(params or {}).items())],
        tags=[RunTag(k, str(v)) for k, v in sorted((tags or {}).items())],
    )
    for folder, path in (artifacts or {}).items():
        if path.is_dir():
            mlflow_client.log_artifacts(run_id, str(path), folder)
        else:
            mlflow_client.log_artifact(run_id, str(path), folder)


def start_run(settings: Settings, name: str, tags: Mapping[str, str] | None = None) -> str:
    """A new run in ``mlflow.experiment``; returns its id. Airflow's run ids become tags."""
    mlflow_client = client(settings)
    airflow = {
        f"airflow.{key}": os.environ[env]
        for key, env in (
            ("dag_id", "AIRFLOW_CTX_DAG_ID"),
            ("dag_run_id", "AIRFLOW_CTX_DAG_RUN_ID"),
            ("task_id", "AIRFLOW_CTX_TASK_ID"),
        )
        if os.environ.get(env)
    }
    run = mlflow_client.create_run(
        experiment_id(settings, mlflow_client),
        run_name=name,
        tags={**airflow, **(tags or {})},
    )
    return run.info.run_id


def end_run(settings: Settings, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run ``FINISHED`` (or ``FAILED``)."""
    client(settings).set_terminated(run_id, status)


def _versions(settings: Settings, mlflow_client: MlflowClient) -> list[ModelVersion]:
    name = settings.mlflow.model_name
    found = mlflow_client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda mv: int(mv.version))


def _run_of(metadata: Mapping[str, Any]) -> str | None:
    return (metadata.get("training") or {}).get("mlflow_run_id")


def register(settings: Settings, version: str) -> ModelVersion:
    """The registered version of model folder ``version``, created on first call.

    Its source is the ``model`` artifact of the training run; a folder trained without a run
    (a hand-made test model, say) gets a run of its own that logs the folder first.
    """
    import json

    validate_version(version)
    mlflow_client = client(settings)
    for mv in _versions(settings, mlflow_client):
        if mv.tags.get(VERSION_TAG) == version:
            return mv
    folder = local_model_dir(settings, version)
    run_id = _run_of(json.loads((folder / METADATA_FILE).read_text()))
    if run_id is not None:
        try:
            mlflow_client.get_run(run_id)
        except Exception as exc:
            if not _not_found(exc):
                raise
            run_id = None  # trained against another store (a copied folder)
    if run_id is None:
        run_id = start_run(settings, version, {VERSION_TAG: version, "source": "imported"})
        log_to_run(settings, run_id, artifacts={MODEL_ARTIFACT: folder})
        end_run(settings, run_id)
    name = settings.mlflow.model_name
    try:
        mlflow_client.get_registered_model(name)
    except Exception as exc:
        if not _not_found(exc):
            raise
        mlflow_client.create_registered_model(name, description="feedrank's XGBoost heads")
    source = f"{mlflow_client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
    return mlflow_client.create_model_version(
        name, source, run_id=run_id, tags={VERSION_TAG: version}
    )


def champion(settings: Settings) -> ModelVersion | None:
    """The registered version the ``champion`` alias names; ``None`` before the first.

    Raises:
        TrackingUnavailable: The store did not answer.
    """
    try:
        mlflow_client = client(settings)
        return mlflow_client.get_model_version_by_alias(settings.mlflow.model_name, CHAMPION)
    except Exception as exc:
        if _not_found(exc):
            return None
        raise _unavailable(settings, exc) from exc


def champion_version(settings: Settings) -> str | None:
    """The champion's model folder name (``feedrank_version``); ``None`` before the first.

    Raises:
        TrackingUnavailable: The store did not answer.
    """
    mv = champion(settings)
    return None if mv is None else mv.tags.get(VERSION_TAG)


def set_champion(settings: Settings, version: str) -> ModelVersion:
    """Register ``version`` if needed and move the ``champion`` alias to it.

    Callers must have run the promotion gate; this only moves the alias. The new champion's
    ``previous_champion`` tag names the version it replaced (kept when it is re-promoted).
    """
    previous = champion(settings)
    mv = register(settings, version)
    mlflow_client = client(settings)
    if previous is not None and previous.version != mv.version:
        mlflow_client.set_model_version_tag(mv.name, mv.version, PREVIOUS_TAG, previous.version)
    mlflow_client.set_registered_model_alias(mv.name, CHAMPION, mv.version)
    log.info("champion alias -> %s version %s (%s)", mv.name, mv.version, version)
    return mv


def rollback(settings: Settings) -> tuple[ModelVersion, ModelVersion]:
    """Move ``champion`` back to the version the current champion replaced.

    Returns:
        ``(from, to)``.

    Raises:
        FeedrankError: No champion, or the champion replaced none.
    """
    current = champion(settings)
    if current is None:
        raise FeedrankError("no champion to roll back")
    previous = current.tags.get(PREVIOUS_TAG)
    if previous is None:
        raise FeedrankError(
            f"champion {current.tags.get(VERSION_TAG)} (version {current.version}) replaced no "
            "earlier champion: nothing to roll back to"
        )
    mlflow_client = client(settings)
    target = mlflow_client.get_model_version(current.name, previous)
    mlflow_client.set_registered_model_alias(current.name, CHAMPION, target.version)
    log.info("rolled champion back: %s -> %s", current.version, target.version)
    return current, target


@dataclass(frozen=True)
class VersionRow:
    """One registered version as ``feedrank models`` prints it."""

    version: str  # MLflow's version number
    feedrank_version: str | None
    run_id: str | None
    champion: bool
    previous_champion: str | None
    metrics: dict[str, float]


# What `feedrank evaluate` logged (on the model's own held-out day) that `models` shows.
KEY_METRICS = (
    "summary.mean_rce",
    "summary.min_auc",
    "ndcg10.model",
    "summary.ndcg10_share_of_oracle",
)


def list_versions(settings: Settings) -> list[VersionRow]:
    """Every registered version, oldest first, with its run's key metrics."""
    mlflow_client = client(settings)
    current = champion(settings)
    rows = []
    for mv in _versions(settings, mlflow_client):
        metrics: dict[str, float] = {}
        if mv.run_id:
            logged = mlflow_client.get_run(mv.run_id).data.metrics
            metrics = {k: round(logged[k], 4) for k in KEY_METRICS if k in logged}
        rows.append(
            VersionRow(
                version=str(mv.version),
                feedrank_version=mv.tags.get(VERSION_TAG),
                run_id=mv.run_id,
                champion=current is not None and current.version == mv.version,
                previous_champion=mv.tags.get(PREVIOUS_TAG),
                metrics=metrics,
            )
        )
    return rows


def local_model_dir(settings: Settings, ref: str | Path) -> Path:
    """A model folder on this machine for ``ref``: a path, ``"champion"`` or a version name.

    A version with no folder under ``paths.models`` (trained on another machine against a
    shared store) is downloaded from its run's ``model`` artifact first.

    Raises:
        FeedrankError: No champion yet, or no such version anywhere.
    """
    text = str(ref)
    if isinstance(ref, Path) or os.sep in text:
        return Path(text)
    if text == CHAMPION:
        found = champion_version(settings)
        if found is None:
            raise FeedrankError(f"no champion model yet in {tracking_uri(settings)}")
        text = found
    folder = version_dir(settings, text)
    if (folder / METADATA_FILE).is_file():
        return folder
    mlflow_client = client(settings)
    runs = mlflow_client.search_runs(
        [experiment_id(settings, mlflow_client)],
        filter_string=f"tags.{VERSION_TAG} = '{text}'",
        max_results=1,
    )
    if not runs:
        raise FeedrankError(f"no model {text} under {folder.parent} nor in the MLflow store")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{text}.") as tmp:
        got = mlflow_client.download_artifacts(runs[0].info.run_id, MODEL_ARTIFACT, tmp)
        if not folder.exists():
            shutil.move(got, folder)
    log.info("downloaded model %s from run %s", text, runs[0].info.run_id)
    return folder
