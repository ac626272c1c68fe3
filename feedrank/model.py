"""The model as data: per-head probabilities, their recalibration, the light ranker.

What a loaded model version is and computes, independent of where its files are kept
(:mod:`feedrank.model_files` writes and verifies them; MLflow, :mod:`feedrank.tracking`,
tracks runs and the ``champion`` alias).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feedrank import feature_spec
from feedrank.ranking import weighted_score


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


@dataclass(frozen=True)
class DayAheadCalibration:
    """Per-head Platt scaling ``q' = sigmoid(slope · logit(q) + intercept)``.

    Fitted by ``feedrank train`` on the most recent labelled day before the held-out day,
    scored by heads that had not seen that day (jobs/train_calibration.py), so it corrects the
    shift a model shows on the day after its training data. Applied after the downsampling
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
    raw = {head: booster.inplace_predict(X) for head, booster in boosters.items()}
    return calibrated_heads(raw, keep_rates, calibration)


def calibrated_heads(
    raw: Mapping[str, np.ndarray],
    keep_rates: Mapping[str, float] | None = None,
    calibration: Mapping[str, DayAheadCalibration] | None = None,
) -> dict[str, np.ndarray]:
    """The heads' booster outputs ``raw`` as float64 probabilities, recalibrated for negative
    downsampling with ``keep_rates`` (``None``: left raw, and no calibration), then by each
    listed head's ``calibration``."""
    out: dict[str, np.ndarray] = {}
    for head, p in raw.items():
        p = np.asarray(p, dtype=np.float64)
        if keep_rates is not None:
            p = recalibrate(p, keep_rates[head])
            if calibration and head in calibration:
                p = calibration[head].apply(p)
        out[head] = p
    return out


# Everything in a head's saved model except its trees and its intercept: heads joined into one
# booster must agree on all of it.
_JOINT_FRAME = ("feature_names", "feature_types", "objective")
_JOINT_PROBE_ROWS = 256


def joint_booster(boosters: Mapping[str, Any], nthread: int = 1) -> Any | None:
    """The heads as one multi-target XGBoost booster, whose ``inplace_predict`` gives every
    head's output, column by column in ``boosters`` order, in one call.

    Five calls cost five times XGBoost's fixed cost per call (~0.2 ms) and fill each row's
    feature vector five times; one call over the same trees cost ~20 % less CPU on 300 rows.
    The trees are the heads' own, copied unchanged (tree ``i`` of head ``k`` adds to output
    ``k``), so the outputs are the same floats: checked on a probe matrix before the joint
    booster is returned.

    Returns:
        The joint booster, or ``None`` when the heads cannot be joined (not plain gradient
        boosted trees with one output each, different feature names, types or objectives) or
        the probe disagrees: then the heads are predicted one by one.
    """
    import xgboost as xgb

    heads = list(boosters)
    if len(heads) < 2 or not all(isinstance(b, xgb.Booster) for b in boosters.values()):
        return None
    try:
        joint = _joint_model([json.loads(bytes(b.save_raw("json"))) for b in boosters.values()])
        if joint is None:
            return None
        booster = xgb.Booster(model_file=bytearray(json.dumps(joint).encode()))
    except (KeyError, TypeError, ValueError, AttributeError, xgb.core.XGBoostError):
        return None  # a layout this function does not know: the heads one by one
    booster.set_param({"nthread": nthread})
    probe = _probe_matrix(booster.num_features())
    alone = np.stack([boosters[h].inplace_predict(probe) for h in heads], axis=1)
    together = np.asarray(booster.inplace_predict(probe)).reshape(alone.shape)
    return booster if np.array_equal(alone, together) else None


def _joint_model(saved: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The heads' saved models (XGBoost JSON) as one multi-target model, or ``None`` when
    they cannot be joined. Round ``r`` holds each head's tree ``r``, if it has one."""
    models = [doc["learner"] for doc in saved]
    first = models[0]
    params = [
        {k: v for k, v in m["learner_model_param"].items() if k != "base_score"} for m in models
    ]
    if any(
        m["gradient_booster"]["name"] != "gbtree"
        or params[i] != params[0]
        or params[i]["num_target"] != "1"
        or params[i]["num_class"] != "0"
        or any(m.get(key) != first.get(key) for key in _JOINT_FRAME)
        or m["gradient_booster"]["model"].get("cats")
        != first["gradient_booster"]["model"].get("cats")
        or m["gradient_booster"]["model"]["gbtree_model_param"]["num_parallel_tree"] != "1"
        for i, m in enumerate(models)
    ):
        return None
    per_head = [m["gradient_booster"]["model"]["trees"] for m in models]
    trees: list[dict[str, Any]] = []
    tree_info: list[int] = []
    indptr = [0]
    for round_ in range(max(len(t) for t in per_head)):
        for k, head_trees in enumerate(per_head):
            if round_ < len(head_trees):
                trees.append({**head_trees[round_], "id": len(trees)})
                tree_info.append(k)
        indptr.append(len(trees))
    intercepts = [m["learner_model_param"]["base_score"].strip("[]") for m in models]
    first["attributes"] = {}
    first["learner_model_param"].update(
        num_target=str(len(models)), base_score="[" + ",".join(intercepts) + "]"
    )
    model = first["gradient_booster"]["model"]
    model.update(trees=trees, tree_info=tree_info, iteration_indptr=indptr)
    model["gbtree_model_param"]["num_trees"] = str(len(trees))
    return saved[0]


def _probe_matrix(n_features: int) -> np.ndarray:
    """Rows that reach many leaves: values across several scales, 10 % missing."""
    rng = np.random.default_rng(0)
    scale = 10.0 ** rng.integers(-3, 6, size=(_JOINT_PROBE_ROWS, n_features))
    X = rng.standard_normal((_JOINT_PROBE_ROWS, n_features)) * scale
    X[rng.random(X.shape) < 0.1] = np.nan
    return X


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
        joint: The heads as one booster (:func:`joint_booster`), predicted in one call;
            ``None``: one call per head.
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
    joint: Any | None = None
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
        X = self._check(X)
        keep_rates = self.keep_rates if calibrated else None
        if self.joint is None:
            return head_probabilities(self.boosters, X, keep_rates, self.calibration)
        out = np.asarray(self.joint.inplace_predict(X)).reshape(len(X), len(self.boosters))
        raw = {head: out[:, k] for k, head in enumerate(self.boosters)}
        return calibrated_heads(raw, keep_rates, self.calibration)

    def weighted_scores(self, X: np.ndarray) -> np.ndarray:
        """The ranking score :func:`feedrank.ranking.weighted_score` with this model's weights."""
        return weighted_score(self.predict_heads(X), self.weights)

    def light_scores(self, X: np.ndarray) -> np.ndarray:
        """Light-ranker score for each row of the full ``model_features()`` matrix."""
        X = self._check(X)
        return self.light.predict(X[:, self._light_idx])


def booster_features(booster: Any, names: tuple[str, ...]) -> set[str]:
    """The feature names a booster's trees split on (``names``: the matrix's columns)."""
    used = set()
    for key in booster.get_score(importance_type="weight"):
        # Boosters without feature names report columns as f0, f1, ...
        if key not in names and key.startswith("f") and key[1:].isdigit():
            key = names[int(key[1:])]
        used.add(key)
    return used
