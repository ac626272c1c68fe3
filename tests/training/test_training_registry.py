"""Registry: atomic versions, checksums, contract checks, champion pointer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from feedrank import registry
from feedrank.config import HEADS, Settings
from feedrank.errors import FeedrankError
from feedrank.feature_spec import LIGHT_RANKER_FEATURES, model_features

pytestmark = pytest.mark.unit


@pytest.fixture
def model_copy(train_settings: Settings, trained, tmp_path: Path) -> Path:
    """A private copy of the trained model directory to damage."""
    target = tmp_path / "copy"
    shutil.copytree(trained.path, target)
    return target


def test_recalibration_undoes_negative_downsampling() -> None:
    # True rate 0.02; keeping 25% of negatives makes it 0.02 / (0.02 + 0.98 * 0.25).
    downsampled = 0.02 / (0.02 + 0.98 * 0.25)
    assert registry.recalibrate(np.array([downsampled]), 0.25)[0] == pytest.approx(0.02)
    np.testing.assert_array_equal(registry.recalibrate(np.array([0.3]), 1.0), [0.3])


def test_saved_model_loads_and_predicts_like_the_boosters(
    train_settings: Settings, trained
) -> None:
    model = registry.load_model(trained.version, train_settings)
    assert model.version == "good"
    assert {p.suffix for p in model.path.iterdir()} == {".ubj", ".json"}  # never pickle
    meta = json.loads((model.path / "metadata.json").read_text())
    assert meta["features"] == model_features() and meta["heads"] == list(HEADS)
    X = np.random.default_rng(0).random((7, len(model_features())))
    X[0, 3] = np.nan
    raw = model.predict_heads(X, calibrated=False)
    for head in HEADS:
        np.testing.assert_allclose(
            raw[head], trained.heads[head].booster.inplace_predict(X), rtol=1e-6
        )
        q = model.predict_heads(X)[head]
        assert np.all(q <= raw[head] + 1e-12)  # recalibration lowers downsampled odds
    light = model.light_scores(X)
    idx = [model_features().index(f) for f in LIGHT_RANKER_FEATURES]
    np.testing.assert_allclose(light, model.light.predict(X[:, idx]))
    with pytest.raises(ValueError, match="shape"):
        model.predict_heads(X[:, :5])


def test_prediction_threads_default_to_training_and_can_be_chosen(
    train_settings: Settings, trained
) -> None:
    def threads(model: registry.LoadedModel) -> set[str]:
        return {
            json.loads(b.save_config())["learner"]["generic_param"]["nthread"]
            for b in model.boosters.values()
        }

    default = registry.load_model(trained.version, train_settings)
    assert threads(default) == {str(train_settings.training.nthread)}
    assert threads(registry.load_model(trained.version, train_settings, nthread=1)) == {"1"}


def test_changed_file_is_refused_with_checksum_mismatch(
    train_settings: Settings, model_copy: Path
) -> None:
    data = bytearray((model_copy / "reply.ubj").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model_copy / "reply.ubj").write_bytes(bytes(data))
    with pytest.raises(FeedrankError, match=r"checksum mismatch for reply\.ubj"):
        registry.load_model(model_copy, train_settings)


def test_corrupted_booster_is_refused_even_with_a_matching_checksum(
    train_settings: Settings, model_copy: Path
) -> None:
    (model_copy / "like.ubj").write_bytes(b"{not a model")
    meta = json.loads((model_copy / "metadata.json").read_text())
    meta["files"]["like.ubj"] = registry.file_sha256(model_copy / "like.ubj")
    (model_copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(FeedrankError, match=r"corrupted file like\.ubj"):
        registry.load_model(model_copy, train_settings)


def test_contract_mismatch_is_refused(train_settings: Settings, model_copy: Path) -> None:
    meta = json.loads((model_copy / "metadata.json").read_text())
    meta["features"] = [*meta["features"][1:], meta["features"][0]]
    (model_copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(FeedrankError, match=r"contract mismatch.*different order"):
        registry.load_model(model_copy, train_settings)


def test_broken_metadata_is_refused(train_settings: Settings, model_copy: Path) -> None:
    (model_copy / "metadata.json").write_text("{")
    with pytest.raises(FeedrankError, match=r"corrupted metadata\.json"):
        registry.load_model(model_copy, train_settings)


def test_refused_load_leaves_the_serving_model_working(
    train_settings: Settings, trained, model_copy: Path
) -> None:
    serving = registry.load_model(trained.version, train_settings)
    (model_copy / "click.ubj").write_bytes(b"")
    with pytest.raises(FeedrankError):
        serving = registry.load_model(model_copy, train_settings)
    X = np.zeros((2, len(model_features())), dtype=np.float32)
    assert serving.version == "good"
    assert set(serving.predict_heads(X)) == set(HEADS)


def test_champion_pointer_moves_atomically(train_settings: Settings, trained, tmp_path) -> None:
    settings = train_settings.model_copy(
        update={"paths": train_settings.paths.model_copy(update={"home": tmp_path})}
    )
    shutil.copytree(trained.path, settings.paths.models / "a")
    shutil.copytree(trained.path, settings.paths.models / "b")
    assert registry.champion_version(settings) is None
    registry.set_champion(settings, "a")
    registry.set_champion(settings, "b")
    pointer = json.loads((settings.paths.models / "champion.json").read_text())
    assert registry.champion_version(settings) == "b" and pointer["previous"] == "a"
    assert not list(settings.paths.models.glob(".champion*"))  # no temp files left
    assert registry.list_versions(settings) == ["a", "b"]
    with pytest.raises(FeedrankError, match="no such model"):
        registry.set_champion(settings, "missing")
    assert registry.load_model("champion", settings).path.name == "b"


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "x" * 65])
def test_unsafe_version_names_are_refused(bad: str) -> None:
    with pytest.raises(FeedrankError, match="invalid model version"):
        registry.validate_version(bad)
