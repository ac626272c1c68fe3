"""Serving follows the MLflow ``champion`` alias, keeps its model while the store is down, and
refuses a version whose feature contract does not match.

The watcher is driven the way the consumer loop drives it (``maybe_swap`` between requests)
against a real embedded MLflow store and real model folders; no broker is needed for this.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from serving_helpers import train_throwaway_model, with_serving

from feedrank import tracking
from feedrank.config import PathsConfig, Settings
from feedrank.model_files import METADATA_FILE, version_dir
from serving.reload import ModelWatcher
from serving.scorer import ModelSlot, load_serving_model

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def home(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A run folder of its own (models + MLflow store) with v1 as champion."""
    root = tmp_path_factory.mktemp("watcher-home")
    own = with_serving(settings.model_copy(update={"paths": PathsConfig(home=root)}))
    train_throwaway_model(own, seed=1, version="w-v1")
    tracking.set_champion(own, "w-v1")
    return own


def _watch_until(watcher: ModelWatcher, done, checks: int = 200) -> None:
    """Drive the watcher between 'requests' until ``done()`` or ``checks`` checks completed."""
    watcher.interval_s = 0.0
    start = watcher.checks
    while not done() and watcher.checks - start < checks:
        watcher.maybe_swap()
    watcher.maybe_swap()


def test_serving_follows_the_champion_alias_and_a_rollback(home: Settings) -> None:
    slot = ModelSlot(load_serving_model("champion", home))
    watcher = ModelWatcher(home, slot)
    assert slot.version == "w-v1"
    train_throwaway_model(home, seed=2, version="w-v2")
    tracking.set_champion(home, "w-v2")
    _watch_until(watcher, lambda: slot.version == "w-v2")
    assert slot.version == "w-v2" and not watcher.refused
    # `feedrank promote --rollback`: the alias goes back, and so does serving.
    before, after = tracking.rollback(home)
    assert (before.tags[tracking.VERSION_TAG], after.tags[tracking.VERSION_TAG]) == (
        "w-v2",
        "w-v1",
    )
    _watch_until(watcher, lambda: slot.version == "w-v1")
    assert slot.version == "w-v1"


def test_serving_keeps_its_model_while_the_tracking_store_is_unreachable(
    home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = home.model_copy(
        update={
            "mlflow": home.mlflow.model_copy(update={"tracking_uri": f"http://127.0.0.1:{port}"})
        }
    )
    slot = ModelSlot(load_serving_model("w-v1", home))
    watcher = ModelWatcher(down, slot)
    _watch_until(watcher, lambda: False, checks=3)
    assert watcher.checks >= 3
    assert slot.version == "w-v1"
    assert watcher.store_error is not None and f"127.0.0.1:{port}" in watcher.store_error
    with pytest.raises(tracking.TrackingUnavailable):
        tracking.champion_version(down)
    # The store answers again (the embedded one here): the watcher follows the alias again.
    watcher.settings = home
    tracking.set_champion(home, "w-v2")
    _watch_until(watcher, lambda: slot.version == "w-v2")
    assert slot.version == "w-v2" and watcher.store_error is None


def test_serving_refuses_a_version_whose_contract_does_not_match(home: Settings) -> None:
    tracking.set_champion(home, "w-v1")
    slot = ModelSlot(load_serving_model("w-v1", home))
    watcher = ModelWatcher(home, slot)
    # A model trained on another feature list: same files and checksums, other contract.
    train_throwaway_model(home, seed=3, version="w-other")
    meta_path: Path = version_dir(home, "w-other") / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["features"] = list(reversed(meta["features"]))
    meta["contract_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    tracking.set_champion(home, "w-other")
    _watch_until(watcher, lambda: "w-other" in watcher.refused)
    assert "contract mismatch" in watcher.refused["w-other"]
    assert slot.version == "w-v1"
    tracking.set_champion(home, "w-v1")


def test_a_registered_model_without_the_alias_has_no_champion(home: Settings) -> None:
    mlflow_client = tracking.client(home)
    mlflow_client.delete_registered_model_alias(home.mlflow.model_name, tracking.CHAMPION)
    try:
        assert tracking.champion_version(home) is None
    finally:
        tracking.set_champion(home, "w-v1")
    assert tracking.champion_version(home) == "w-v1"
