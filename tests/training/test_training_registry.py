"""Model folders: checksums and contract checks at load time; the MLflow champion alias."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from feedrank import tracking
from feedrank.config import HEADS, Settings
from feedrank.errors import FeedrankError
from feedrank.feature_spec import LIGHT_RANKER_FEATURES, model_features
from feedrank.model import LoadedModel, recalibrate
from feedrank.model_files import file_sha256, load_model, validate_version
from feedrank.tracking import champion_version, set_champion

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
    assert recalibrate(np.array([downsampled]), 0.25)[0] == pytest.approx(0.02)
    np.testing.assert_array_equal(recalibrate(np.array([0.3]), 1.0), [0.3])


def test_saved_model_loads_and_predicts_like_the_boosters(
    train_settings: Settings, trained
) -> None:
    model = load_model(trained.version, train_settings)
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
    def threads(model: LoadedModel) -> set[str]:
        return {
            json.loads(b.save_config())["learner"]["generic_param"]["nthread"]
            for b in model.boosters.values()
        }

    default = load_model(trained.version, train_settings)
    assert threads(default) == {str(train_settings.training.nthread)}
    assert threads(load_model(trained.version, train_settings, nthread=1)) == {"1"}


def test_changed_file_is_refused_with_checksum_mismatch(
    train_settings: Settings, model_copy: Path
) -> None:
    data = bytearray((model_copy / "reply.ubj").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model_copy / "reply.ubj").write_bytes(bytes(data))
    with pytest.raises(FeedrankError, match=r"checksum mismatch for reply\.ubj"):
        load_model(model_copy, train_settings)


def test_corrupted_booster_is_refused_even_with_a_matching_checksum(
    train_settings: Settings, model_copy: Path
) -> None:
    (model_copy / "like.ubj").write_bytes(b"{not a model")
    meta = json.loads((model_copy / "metadata.json").read_text())
    meta["files"]["like.ubj"] = file_sha256(model_copy / "like.ubj")
    (model_copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(FeedrankError, match=r"corrupted file like\.ubj"):
        load_model(model_copy, train_settings)


def test_contract_mismatch_is_refused(train_settings: Settings, model_copy: Path) -> None:
    meta = json.loads((model_copy / "metadata.json").read_text())
    meta["features"] = [*meta["features"][1:], meta["features"][0]]
    (model_copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(FeedrankError, match=r"contract mismatch.*different order"):
        load_model(model_copy, train_settings)


def test_broken_metadata_is_refused(train_settings: Settings, model_copy: Path) -> None:
    (model_copy / "metadata.json").write_text("{")
    with pytest.raises(FeedrankError, match=r"corrupted metadata\.json"):
        load_model(model_copy, train_settings)


def test_refused_load_leaves_the_serving_model_working(
    train_settings: Settings, trained, model_copy: Path
) -> None:
    serving = load_model(trained.version, train_settings)
    (model_copy / "click.ubj").write_bytes(b"")
    with pytest.raises(FeedrankError):
        serving = load_model(model_copy, train_settings)
    X = np.zeros((2, len(model_features())), dtype=np.float32)
    assert serving.version == "good"
    assert set(serving.predict_heads(X)) == set(HEADS)


# Four `feedrank` processes that import MLflow: seconds each, minutes on a loaded machine.
@pytest.mark.timeout(900)
def test_champion_alias_moves_lists_and_rolls_back(
    train_settings: Settings, trained, tmp_path
) -> None:
    settings = train_settings.model_copy(
        update={"paths": train_settings.paths.model_copy(update={"home": tmp_path})}
    )
    # Copies of a model trained against another store: each gets a run of its own here.
    shutil.copytree(trained.path, settings.paths.models / "a")
    shutil.copytree(trained.path, settings.paths.models / "b")
    assert champion_version(settings) is None
    set_champion(settings, "a")
    set_champion(settings, "b")
    assert champion_version(settings) == "b"
    rows = [
        (r.version, r.feedrank_version, r.champion, r.previous_champion)
        for r in tracking.list_versions(settings)
    ]
    assert rows == [("1", "a", False, None), ("2", "b", True, "1")]
    assert tracking.local_model_dir(settings, "champion").name == "b"
    with pytest.raises(FeedrankError, match="no model missing"):
        set_champion(settings, "missing")
    # The embedded store lives in the run folder.
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()

    env = {"FEEDRANK_PATHS__HOME": str(tmp_path)}
    models = _feedrank("models", "--json", **env)
    assert models.returncode == 0, models.stderr
    listed = json.loads(models.stdout)
    assert [(r["feedrank_version"], r["champion"]) for r in listed] == [("a", False), ("b", True)]
    back = _feedrank("promote", "--rollback", **env)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["champion"] == {"version": "1", "feedrank_version": "a"}
    assert champion_version(settings) == "a"
    # "a" replaced no champion: nothing further back; refused with one line, exit 1.
    again = _feedrank("promote", "--rollback", **env)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert "nothing to roll back to" in again.stderr
    # Bad usage: exit 2, one line.
    for argv in (("promote",), ("promote", "--rollback", "--version", "b")):
        usage = _feedrank(*argv, **env)
        assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1, usage


def _feedrank(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "feedrank"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "x" * 65])
def test_unsafe_version_names_are_refused(bad: str) -> None:
    with pytest.raises(FeedrankError, match="invalid model version"):
        validate_version(bad)
