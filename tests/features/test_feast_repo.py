"""feature_repo/ against the contract; key and value encodings against Feast's own."""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from feedrank import feature_spec as spec
from feedrank.config import FeastConfig, PathsConfig, Settings
from feedrank.featurestore import REPO_DIR, feature_store_config

pytestmark = pytest.mark.unit


def test_committed_feature_store_yaml_is_the_local_profile(tmp_path: Path) -> None:
    text = (REPO_DIR / "feature_store.yaml").read_text()
    expanded = yaml.safe_load(text.replace("${FEEDRANK_PATHS__HOME}", str(tmp_path)))
    local = Settings(paths=PathsConfig(home=tmp_path), feast=FeastConfig())
    assert expanded == feature_store_config(local)


def test_profiles_pick_stores_by_config(tmp_path: Path) -> None:
    redis_cfg = feature_store_config(
        Settings(paths=PathsConfig(home=tmp_path), feast=FeastConfig(online_store="redis"))
    )
    spark_cfg = feature_store_config(
        Settings(
            paths=PathsConfig(home=tmp_path),
            feast=FeastConfig(online_store="redis", offline_store="spark"),
        )
    )
    assert redis_cfg["online_store"]["type"] == "redis"
    assert redis_cfg["registry"]["path"] != spark_cfg["registry"]["path"]
    assert spark_cfg["offline_store"]["type"] == "spark"
    for cfg in (redis_cfg, spark_cfg):
        assert Path(cfg["registry"]["path"]).is_relative_to(tmp_path)


def test_entity_key_codec_matches_feast() -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from serving.hydration import EntityKeyCodec

    rng = np.random.default_rng(0)
    for entity in spec.ENTITIES.values():
        codec = EntityKeyCodec(entity.join_keys)
        rows = [
            tuple(int(v) for v in rng.integers(-1, 2**40, len(entity.join_keys))) for _ in range(20)
        ]
        for row, encoded in zip(rows, codec.encode(rows), strict=True):
            proto = EntityKey(
                join_keys=list(entity.join_keys), entity_values=[Value(int64_val=v) for v in row]
            )
            assert encoded == serialize_entity_key(proto, 3)
            assert codec.decode(encoded) == row


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**40, -5, 0.0, 0.25, -1e300, math.nan])
def test_decode_value_matches_feast(value: float) -> None:
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    from serving.hydration import decode_value

    kind = ValueType.INT64 if isinstance(value, int) else ValueType.DOUBLE
    (proto,) = python_values_to_proto_values([value], kind)
    decoded = decode_value(proto.SerializeToString())
    assert decoded == value or (math.isnan(value) and math.isnan(decoded))
    assert math.isnan(decode_value(b"")) and math.isnan(decode_value(None))


@pytest.mark.integration
def test_feast_cli_apply_on_a_fresh_clone_registers_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`feast apply` with the committed feature_store.yaml, no feature tables yet."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO_DIR, clone / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "FEEDRANK_PATHS__HOME": str(home), "FEEDRANK_PROFILE": "local"}
    feast_cli = Path(sys.executable).parent / "feast"
    done = subprocess.run(
        [str(feast_cli), "-c", "feature_repo", "apply"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "Could not validate" not in output and "does not exist" not in output
    assert "No project found" not in output
    for name in spec.VIEWS:
        assert f"Created feature view {name}" in done.stdout
    assert f"Created on demand feature view {spec.CONTEXT_VIEW}" in done.stdout
    assert f"Created feature service {spec.FEATURE_SERVICE}" in done.stdout

    from feast import FeatureStore

    monkeypatch.setenv("FEEDRANK_PATHS__HOME", str(home))  # read the yaml as the CLI did
    store = FeatureStore(repo_path=str(clone / "feature_repo"))
    service = store.get_feature_service(spec.FEATURE_SERVICE)
    served = [f.name for p in service.feature_view_projections for f in p.features]
    assert served == spec.model_features()
    registered = {fv.name for fv in store.list_feature_views()}
    assert registered == set(spec.VIEWS)
    for view in spec.VIEWS.values():
        fv = store.get_feature_view(view.name)
        assert [f.name for f in fv.features] == view.feature_names
        assert fv.ttl == dt.timedelta(days=view.ttl_days)
        assert sorted(fv.join_keys) == sorted(spec.ENTITIES[view.entity].join_keys)
    assert {s.name for s in store.list_data_sources()} >= {
        "tweet_realtime_push",
        "user_realtime_push",
    }
