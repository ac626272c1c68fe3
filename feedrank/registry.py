"""Versioned model registry: one directory per model version, a gated champion pointer.

Long because: the model version's file format (write, load, verify, champion pointer) is one
contract.

Layout under ``settings.paths.models``::

    <version>/
        like.ubj reply.ubj retweet.ubj click.ubj negative.ubj   # XGBoost UBJ, one per head
        light_ranker.json                                       # linear model, JSON
        metadata.json                                           # contract, rates, checksums
    champion.json                                               # {"version": ..., ...}

Never pickle: boosters are UBJ and the light ranker is plain JSON, so a model file can be
read without executing anything. A version directory is written under a temporary name and
renamed into place, and ``champion.json`` is replaced with ``os.replace``, so a reader sees
either the old state or the new one, never half of either.

:func:`load_model` is the serving hot path's entry point: it verifies every file's sha256,
the feature contract (FeatureService name, ordered features, their hash) and the boosters
themselves, and raises :class:`~feedrank.errors.FeedrankError` with a one-line reason
otherwise, so a caller can keep serving the model it already has.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feedrank import feature_spec
from feedrank.config import HEADS, Settings
from feedrank.errors import FeedrankError
from feedrank.publish import write_dir_atomic, write_json_atomic
from feedrank.ranking import weighted_score

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
LIGHT_RANKER_FILE = "light_ranker.json"
CHAMPION_FILE = "champion.json"
# Impression.model_version allows 64 characters; keep versions safe as directory names too.
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def head_file(head: str) -> str:
    """File name of one head's booster inside a version directory."""
    return f"{head}.ubj"


def recalibrate(p: np.ndarray, keep_rate: float) -> np.ndarray:
    """Undo negative downsampling: ``q = p / (p + (1 − p)/w)``, ``w`` the negative keep-rate.

    A model trained on data where negatives were kept with probability ``w`` over-predicts by
    the odds factor ``1/w``; this maps its output back to the un-downsampled scale.
    """
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep rate must be in (0, 1], got {keep_rate}")
    p = np.asarray(p, dtype=np.float64)
    if keep_rate == 1.0:
        return p
    return p / (p + (1.0 - p) / keep_rate)


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


@dataclass(frozen=True)
class DayAheadCalibration:
    """Per-head Platt scaling ``q' = sigmoid(slope · logit(q) + intercept)``.

    Fitted by ``feedrank train`` on the most recent labelled day before the held-out day,
    scored by heads that had not seen that day (jobs/train.py), so it corrects the shift a
    model shows on the day after its training data. Applied after the downsampling
    recalibration ``q = p/(p + (1 − p)/w)``.
    """

    slope: float
    intercept: float

    def apply(self, q: np.ndarray) -> np.ndarray:
        """The calibrated probabilities of ``q`` (probabilities on the true-rate scale)."""
        q = np.clip(np.asarray(q, dtype=np.float64), 1e-12, 1.0 - 1e-12)
        z = self.slope * np.log(q / (1.0 - q)) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> dict[str, float]:
        return {"slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DayAheadCalibration:
        slope, intercept = float(data["slope"]), float(data["intercept"])
        if not (np.isfinite(slope) and np.isfinite(intercept) and slope > 0):
            raise ValueError(f"calibration needs a finite slope > 0 and intercept, got {data}")
        return cls(slope, intercept)


def head_probabilities(
    boosters: Mapping[str, Any],
    X: np.ndarray,
    keep_rates: Mapping[str, float] | None = None,
    calibration: Mapping[str, DayAheadCalibration] | None = None,
) -> dict[str, np.ndarray]:
    """Every head's probability for the rows of ``X``; ``{head: float64 array (n,)}``.

    Args:
        boosters: One booster per head.
        X: The ``model_features()`` matrix.
        keep_rates: Recalibrate for negative downsampling with these rates (``None``: the
            raw booster output, and no calibration).
        calibration: Then apply each listed head's :class:`DayAheadCalibration`.
    """
    out: dict[str, np.ndarray] = {}
    for head, booster in boosters.items():
        p = np.asarray(booster.inplace_predict(X), dtype=np.float64)
        if keep_rates is not None:
            p = recalibrate(p, keep_rates[head])
            if calibration and head in calibration:
                p = calibration[head].apply(p)
        out[head] = p
    return out


LIGHT_RANKER_KINDS = ("linear_regression", "logistic_regression")


@dataclass(frozen=True)
class LightRanker:
    """The funnel's cheap first stage: a linear model on a few features, as plain data.

    ``z = intercept + Σ coef_i · (x_i − mean_i)/scale_i`` with NaN inputs replaced by
    ``fill_values`` (the training medians) before standardising. ``kind`` says what ``z`` is:

    * ``linear_regression`` (what ``feedrank train`` makes): ``z`` itself, an estimate of the
      heavy ranker's weighted score (``target`` ``heavy_weighted_score``), so pruning keeps
      what the heavy ranker would rank high and a degraded answer is on the same scale;
    * ``logistic_regression`` (models trained before): ``sigmoid(z)`` recalibrated for
      negative downsampling with ``keep_rate``, the probability of ``target``.
    """

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    fill_values: tuple[float, ...]
    keep_rate: float = 1.0
    target: str = "any_positive"
    kind: str = "logistic_regression"

    def __post_init__(self) -> None:
        if self.kind not in LIGHT_RANKER_KINDS:
            raise ValueError(f"unknown light ranker kind {self.kind!r}")
        n = len(self.features)
        lengths = {len(self.coef), len(self.mean), len(self.scale), len(self.fill_values)}
        if lengths != {n}:
            raise ValueError("light ranker arrays must all have one value per feature")
        unknown = set(self.features) - set(feature_spec.model_features())
        if unknown:
            raise ValueError(f"light ranker features {sorted(unknown)} missing from schema")

    def predict(self, X_light: np.ndarray) -> np.ndarray:
        """Score of the rows of ``X_light`` (columns = ``self.features``; see ``kind``)."""
        X = np.array(X_light, dtype=np.float64, copy=True)
        nan = np.isnan(X)
        if nan.any():
            X[nan] = np.take(np.asarray(self.fill_values), np.nonzero(nan)[1])
        z = ((X - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef)
        if self.kind == "linear_regression":
            return z + self.intercept
        p = 1.0 / (1.0 + np.exp(-(z + self.intercept)))
        return recalibrate(p, self.keep_rate)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "features": list(self.features),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "mean": list(self.mean),
            "scale": list(self.scale),
            "fill_values": list(self.fill_values),
            "keep_rate": self.keep_rate,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LightRanker:
        if data.get("kind") not in LIGHT_RANKER_KINDS:
            raise ValueError(f"unknown light ranker kind {data.get('kind')!r}")
        return cls(
            features=tuple(data["features"]),
            coef=tuple(float(v) for v in data["coef"]),
            intercept=float(data["intercept"]),
            mean=tuple(float(v) for v in data["mean"]),
            scale=tuple(float(v) for v in data["scale"]),
            fill_values=tuple(float(v) for v in data["fill_values"]),
            keep_rate=float(data.get("keep_rate", 1.0)),
            target=str(data.get("target", "any_positive")),
            kind=str(data["kind"]),
        )


@dataclass
class LoadedModel:
    """A verified model version, ready to score feature matrices in ``model_features()`` order.

    Attributes:
        version: The version name.
        path: Its directory.
        metadata: The parsed ``metadata.json``.
        boosters: One XGBoost booster per head.
        light: The light ranker.
        keep_rates: Per-head negative keep-rate used for recalibration.
        weights: Ranking weights recorded at training time.
        calibration: Per-head day-ahead calibration (empty: none was fitted).
    """

    version: str
    path: Path
    metadata: dict[str, Any]
    boosters: dict[str, Any]
    light: LightRanker
    keep_rates: dict[str, float]
    weights: dict[str, float]
    features: tuple[str, ...] = field(default_factory=tuple)
    calibration: dict[str, DayAheadCalibration] = field(default_factory=dict)
    _light_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        # Column positions of the light ranker's inputs, computed once, not per request.
        index = {name: i for i, name in enumerate(self.features)}
        self._light_idx = np.array([index[f] for f in self.light.features], dtype=np.int64)

    @property
    def n_features(self) -> int:
        return len(self.features)

    def _check(self, X: np.ndarray) -> np.ndarray:
        if not isinstance(X, np.ndarray) or X.dtype not in (np.float32, np.float64):
            X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"feature matrix must have shape (n, {self.n_features}) in model_features() "
                f"order, got {X.shape}"
            )
        return X

    def predict_heads(self, X: np.ndarray, *, calibrated: bool = True) -> dict[str, np.ndarray]:
        """Probability of every head for each row of ``X``.

        Args:
            X: ``(n, n_features)`` float32/float64 matrix in ``model_features()`` order,
                NaN for missing values.
            calibrated: Recalibrate for negative downsampling and apply the day-ahead
                calibration (the true-rate probability); ``False`` gives the raw booster
                output on the downsampled scale.

        Returns:
            ``{head: float64 array (n,)}`` for every head.
        """
        return head_probabilities(
            self.boosters,
            self._check(X),
            self.keep_rates if calibrated else None,
            self.calibration,
        )

    def weighted_scores(self, X: np.ndarray) -> np.ndarray:
        """The ranking score :func:`feedrank.ranking.weighted_score` with this model's weights."""
        return weighted_score(self.predict_heads(X), self.weights)

    def light_scores(self, X: np.ndarray) -> np.ndarray:
        """Light-ranker score for each row of the full ``model_features()`` matrix."""
        X = self._check(X)
        return self.light.predict(X[:, self._light_idx])


def version_dir(settings: Settings, version: str) -> Path:
    """Directory of a model version under ``paths.models``."""
    return settings.paths.models / validate_version(version)


def list_versions(settings: Settings) -> list[str]:
    """Every complete version under ``paths.models``, oldest name first."""
    root = settings.paths.models
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / METADATA_FILE).is_file()
    )


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

    write_dir_atomic(final, build, replace=False)
    return final


def booster_features(booster: Any, names: tuple[str, ...]) -> set[str]:
    """The feature names a booster's trees split on (``names``: the matrix's columns)."""
    used = set()
    for key in booster.get_score(importance_type="weight"):
        # Boosters without feature names report columns as f0, f1, ...
        if key not in names and key.startswith("f") and key[1:].isdigit():
            key = names[int(key[1:])]
        used.add(key)
    return used


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def resolve_model_dir(path_or_version: str | Path, settings: Settings) -> Path:
    """A version name (under ``paths.models``) or a directory path, as a directory."""
    text = str(path_or_version)
    if isinstance(path_or_version, Path) or os.sep in text:
        return Path(text)
    if text == "champion":
        champion = champion_version(settings)
        if champion is None:
            raise FeedrankError(f"no champion model yet under {settings.paths.models}")
        text = champion
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
        path_or_version: A version name under ``paths.models``, ``"champion"``, or a path.
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
        booster.set_param({"nthread": settings.training.nthread if nthread is None else nthread})
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
    )


def champion_version(settings: Settings) -> str | None:
    """The version the champion pointer names, or ``None`` before the first promotion."""
    path = settings.paths.models / CHAMPION_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise FeedrankError(f"corrupted champion pointer {path} ({exc})") from exc
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, str):
        raise FeedrankError(f"corrupted champion pointer {path}: no version")
    return version


def set_champion(settings: Settings, version: str, **details: Any) -> None:
    """Point the champion at ``version`` atomically (temp file, then ``os.replace``).

    Callers must have run the promotion gate; this only moves the pointer.
    """
    model_dir = version_dir(settings, version)
    if not (model_dir / METADATA_FILE).is_file():
        raise FeedrankError(f"cannot promote {version}: no such model under {model_dir.parent}")
    record = {
        "version": version,
        "previous": champion_version(settings),
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(),
        **details,
    }
    root = settings.paths.models
    write_json_atomic(root / CHAMPION_FILE, record, sort_keys=False, default=_json_default)
