"""A model version's files and the checks made when one is loaded.

MLflow (:mod:`feedrank.tracking`) records the runs, the registered versions and which one is
the ``champion``; what it does not do is check, at load time, that the files are the ones
training wrote and that the model fits this build's features. That is this module.

A version folder (``<paths.models>/<version>/``, logged as the training run's ``model``
artifact)::

    like.ubj reply.ubj retweet.ubj click.ubj negative.ubj   # XGBoost UBJ, one per head
    light_ranker.json                                       # linear model, JSON
    metadata.json                                           # contract, rates, checksums

Never pickle: boosters are UBJ and the light ranker is plain JSON, so a model file can be
read without executing anything. The folder is written under a temporary name and renamed
into place. :func:`load_model` verifies every file's sha256, the feature contract
(FeatureService name, ordered features, their hash) and the boosters, and raises
:class:`~feedrank.errors.FeedrankError` with a one-line reason otherwise, so a caller can
keep serving the model it already has.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from feedrank import feature_spec
from feedrank.config import HEADS, Settings
from feedrank.errors import FeedrankError
from feedrank.model import DayAheadCalibration, LightRanker, LoadedModel, joint_booster
from feedrank.publish import write_dir_atomic

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
LIGHT_RANKER_FILE = "light_ranker.json"
# Impression.model_version allows 64 characters; keep versions safe as directory names too.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def head_file(head: str) -> str:
    """File name of one head's booster inside a version directory."""
    return f"{head}.ubj"


def validate_version(version: str) -> str:
    """Return ``version`` if it is a safe version name, else raise :class:`FeedrankError`."""
    if not _VERSION_RE.match(version):
        raise FeedrankError(
            f"invalid model version {version!r}: use 1-64 of [A-Za-z0-9._-], starting alphanumeric"
        )
    return version


def new_version() -> str:
    """A fresh, sortable version name: ``v`` + UTC timestamp to the microsecond."""
    return "v" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_dir(settings: Settings, version: str) -> Path:
    """Directory of a model version under ``paths.models``."""
    return settings.paths.models / validate_version(version)


def save_model(
    settings: Settings,
    *,
    boosters: Mapping[str, Any],
    light_ranker: LightRanker,
    keep_rates: Mapping[str, float],
    training_data: Mapping[str, Any],
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    version: str | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> Path:
    """Write a new model version atomically and return its directory.

    Args:
        settings: Resolved settings (``paths.models``, ``ranking``).
        boosters: One trained ``xgboost.Booster`` per head in ``HEADS``.
        light_ranker: The light ranker.
        keep_rates: Per-head negative keep-rate of the training data (from its manifest).
        training_data: Where the model was trained from, at least ``run`` (directory) and
            ``manifest_sha256``.
        training: How it was trained (trainer, per-head params, best iterations, seconds).
        metrics: Validation metrics known at training time.
        version: Version name; default :func:`new_version`.
        calibration: The day-ahead calibration record: ``heads`` (``{head:
            DayAheadCalibration}``, may be empty) plus how it was fitted.

    Raises:
        FeedrankError: Missing heads, bad keep-rates, or the version already exists.
    """
    version = validate_version(version or new_version())
    if set(boosters) != set(HEADS):
        raise FeedrankError(f"a model needs exactly the heads {HEADS}, got {sorted(boosters)}")
    if set(keep_rates) != set(HEADS) or not all(0 < w <= 1 for w in keep_rates.values()):
        raise FeedrankError(f"keep_rates must give a rate in (0, 1] for each of {HEADS}")
    contract = feature_spec.Contract()
    for head, booster in boosters.items():
        if booster.num_features() != len(contract.features):
            raise FeedrankError(
                f"head {head}: booster has {booster.num_features()} features, the contract "
                f"{contract.feature_service} has {len(contract.features)}"
            )
    calibration_record = dict(calibration or {"heads": {}})
    calibration_record["heads"] = {
        h: c.to_json() for h, c in (calibration_record.get("heads") or {}).items()
    }
    root = settings.paths.models
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    if final.exists():
        raise FeedrankError(f"model version {version} already exists at {final}")

    def build(tmp: Path) -> None:
        files: dict[str, str] = {}
        for head in HEADS:
            path = tmp / head_file(head)
            boosters[head].save_model(str(path))
            files[path.name] = file_sha256(path)
        light_path = tmp / LIGHT_RANKER_FILE
        light_path.write_text(json.dumps(light_ranker.to_json(), indent=2))
        files[light_path.name] = file_sha256(light_path)
        metadata = {
            "format_version": FORMAT_VERSION,
            "version": version,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "feature_service": contract.feature_service,
            "features": list(contract.features),
            "contract_sha256": contract.sha256,
            "not_learned": list(contract.not_learned),
            "heads": list(HEADS),
            "ranking": {
                "weights": dict(settings.ranking.weights),
                "author_diversity_floor": settings.ranking.author_diversity_floor,
            },
            "keep_rates": {h: float(keep_rates[h]) for h in HEADS},
            "calibration": calibration_record,
            "light_ranker": {"file": LIGHT_RANKER_FILE, "features": list(light_ranker.features)},
            "training_data": dict(training_data),
            "training": dict(training or {}),
            "metrics": dict(metrics or {}),
            "files": files,
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=_json_default))

    try:
        write_dir_atomic(final, build, replace=False)
    except (OSError, ValueError) as exc:  # ValueError: xgboost.core.XGBoostError
        # A full disk, say: nothing was published (write_dir_atomic removed its temp folder),
        # so the previous versions are untouched; say why in one line.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        # XGBoost reports a full disk as "FileStream.Write incomplete": the free space says it.
        free = shutil.disk_usage(root).free
        raise FeedrankError(
            f"model version {version} not written to {root} ({free:,} bytes free there "
            f"after cleaning up): {reason}"
        ) from exc
    return final


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def resolve_model_dir(path_or_version: str | Path, settings: Settings) -> Path:
    """A version name (under ``paths.models``) or a directory path, as a directory.

    ``"champion"`` and versions kept only in a shared MLflow store are resolved by
    :func:`feedrank.tracking.local_model_dir`.
    """
    text = str(path_or_version)
    if isinstance(path_or_version, Path) or os.sep in text:
        return Path(text)
    return version_dir(settings, text)


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """Parse a version's ``metadata.json`` or raise :class:`FeedrankError` saying why not."""
    meta_path = model_dir / METADATA_FILE
    if not model_dir.is_dir():
        raise FeedrankError(f"no model at {model_dir}")
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise FeedrankError(f"model {model_dir.name}: {METADATA_FILE} is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeedrankError(f"model {model_dir.name}: corrupted {METADATA_FILE} ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
        raise FeedrankError(
            f"model {model_dir.name}: unsupported metadata format "
            f"{metadata.get('format_version') if isinstance(metadata, dict) else '?'}"
        )
    return metadata


def check_contract(metadata: Mapping[str, Any], name: str) -> None:
    """Refuse a model whose feature contract differs from this build's ``ranker_v1``."""
    contract = feature_spec.Contract()
    if metadata.get("feature_service") != contract.feature_service:
        raise FeedrankError(
            f"model {name}: contract mismatch: FeatureService {metadata.get('feature_service')!r}"
            f" != {contract.feature_service!r}"
        )
    features = tuple(metadata.get("features") or ())
    if features != contract.features or metadata.get("contract_sha256") != contract.sha256:
        diff = sorted(set(features) ^ set(contract.features))
        detail = f"differing features {diff[:5]}" if diff else "same features, different order"
        raise FeedrankError(
            f"model {name}: contract mismatch with {contract.feature_service} "
            f"(model sha256 {str(metadata.get('contract_sha256'))[:12]}, expected "
            f"{contract.sha256[:12]}; {detail})"
        )
    if tuple(metadata.get("heads") or ()) != HEADS:
        raise FeedrankError(f"model {name}: heads {metadata.get('heads')} != {list(HEADS)}")


def load_model(
    path_or_version: str | Path, settings: Settings, *, nthread: int | None = None
) -> LoadedModel:
    """Load and verify a model version.

    Args:
        path_or_version: A version name under ``paths.models`` or a path.
        settings: Resolved settings (``paths.models``; ``training.nthread`` for prediction
            unless ``nthread`` is given).
        nthread: XGBoost prediction threads; serving passes ``serving.model_nthread``.

    Returns:
        The verified :class:`LoadedModel`.

    Raises:
        FeedrankError: One line naming the problem — missing or corrupted file, checksum
            mismatch, contract mismatch. The caller's current model is untouched.
    """
    import xgboost as xgb

    model_dir = resolve_model_dir(path_or_version, settings)
    metadata = read_metadata(model_dir)
    name = str(metadata.get("version", model_dir.name))
    check_contract(metadata, name)
    files: dict[str, str] = metadata.get("files") or {}
    expected = {head_file(h) for h in HEADS} | {LIGHT_RANKER_FILE}
    if set(files) != expected:
        raise FeedrankError(
            f"model {name}: metadata lists files {sorted(files)}, expected {sorted(expected)}"
        )
    for file_name, digest in files.items():
        path = model_dir / file_name
        if not path.is_file():
            raise FeedrankError(f"model {name}: {file_name} is missing")
        if file_sha256(path) != digest:
            raise FeedrankError(
                f"model {name}: checksum mismatch for {file_name} (file changed or corrupted)"
            )
    n_features = len(metadata["features"])
    threads = settings.training.nthread if nthread is None else nthread
    boosters: dict[str, Any] = {}
    for head in HEADS:
        path = model_dir / head_file(head)
        try:
            booster = xgb.Booster(model_file=str(path))
        except xgb.core.XGBoostError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise FeedrankError(f"model {name}: corrupted file {path.name} ({first})") from exc
        if booster.num_features() != n_features:
            raise FeedrankError(
                f"model {name}: {path.name} expects {booster.num_features()} "
                f"features, the contract has {n_features}"
            )
        booster.set_param({"nthread": threads})
        boosters[head] = booster
    try:
        light = LightRanker.from_json(json.loads((model_dir / LIGHT_RANKER_FILE).read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise FeedrankError(f"model {name}: corrupted file {LIGHT_RANKER_FILE} ({exc})") from exc
    keep_rates = metadata.get("keep_rates") or {}
    if set(keep_rates) != set(HEADS) or not all(0 < float(w) <= 1 for w in keep_rates.values()):
        raise FeedrankError(f"model {name}: metadata keep_rates {keep_rates} are invalid")
    weights = (metadata.get("ranking") or {}).get("weights") or dict(settings.ranking.weights)
    try:
        calibration = {
            h: DayAheadCalibration.from_json(c)
            for h, c in ((metadata.get("calibration") or {}).get("heads") or {}).items()
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise FeedrankError(f"model {name}: metadata calibration is invalid ({exc})") from exc
    if set(calibration) - set(HEADS):
        raise FeedrankError(f"model {name}: calibration for unknown heads {sorted(calibration)}")
    return LoadedModel(
        version=name,
        path=model_dir,
        metadata=metadata,
        boosters=boosters,
        light=light,
        keep_rates={h: float(keep_rates[h]) for h in HEADS},
        weights={h: float(w) for h, w in weights.items()},
        features=tuple(metadata["features"]),
        calibration=calibration,
        joint=joint_booster(boosters, threads),
    )
