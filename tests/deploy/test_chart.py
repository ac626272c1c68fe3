"""The Helm chart renders, validates against Kubernetes and KEDA schemas, and agrees with the
profile (topics, partitions, ACLs, feature store); the Dockerfile passes hadolint.

Offline: helm is built from the Go module proxy by `make helm`, the Kubernetes schemas ship
with kubernetes-validate, KEDA's CRDs come from its Go module (``go mod download``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from feedrank.config import Settings
from feedrank.featurestore import feature_store_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "infra" / "helm" / "feedrank"
HELM = ROOT / ".cache" / "go-bin" / "helm"
# Versions checked against (docs/deploy.md names them).
KUBERNETES_VERSION = "1.34.0"
KEDA_MODULE = "github.com/kedacore/keda/v2@v2.18.3"
STRIMZI_POM = ROOT / "infra" / "k8s" / "pom.xml"  # io.strimzi:api at the pinned version
STRIMZI_JARS = ROOT / ".cache" / "k8s-jars"
VALUES = ("values-small.yaml", "values-prod.yaml")


def _helm(*args: str) -> str:
    if not HELM.is_file():
        pytest.fail(f"{HELM} missing: run `make helm` (make test builds it)")
    done = subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _render(values: str) -> str:
    _helm("lint", "--strict", str(CHART), "-f", str(CHART / values))
    return _helm("template", "feedrank", str(CHART), "-f", str(CHART / values))


@pytest.fixture(scope="module", params=VALUES)
def rendered(request: pytest.FixtureRequest) -> list[dict]:
    """Every object `helm template` renders with one values file."""
    return [doc for doc in yaml.safe_load_all(_render(request.param)) if doc]


@pytest.mark.parametrize("values", VALUES)
def test_strimzi_reads_every_topic_and_user_as_written(values: str, tmp_path: Path) -> None:
    """Strimzi's own model (io.strimzi:api via Maven) parses each KafkaTopic and KafkaUser with
    no unknown field and no value it does not know (infra/k8s/StrimziCheck.java)."""
    if not any(STRIMZI_JARS.glob("api-*.jar")):
        fetched = subprocess.run(
            ["mvn", "-B", "-q", "-f", str(STRIMZI_POM), "dependency:copy-dependencies"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert fetched.returncode == 0, fetched.stdout[-2000:]
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(_render(values))
    check = ROOT / "infra" / "k8s" / "StrimziCheck.java"
    done = subprocess.run(
        ["java", "-cp", f"{STRIMZI_JARS}/*", str(check), str(manifest)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    expected = 0 if values == "values-prod.yaml" else 15  # prod: topics managed elsewhere
    assert f"checked {expected} Strimzi resources" in done.stdout


def _kinds(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def test_every_core_object_validates_strictly_against_the_kubernetes_schema(
    rendered: list[dict],
) -> None:
    import kubernetes_validate

    core = [o for o in rendered if "." not in o["apiVersion"].split("/")[0]
            or o["apiVersion"].startswith(("apps/", "policy/"))]  # fmt: skip
    assert {o["kind"] for o in core} >= {"Deployment", "PodDisruptionBudget", "ConfigMap"}
    for obj in core:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _crd_schema(module_dir: Path, crd_file: str) -> dict:
    crd = yaml.safe_load((module_dir / "config" / "crd" / "bases" / crd_file).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    return version["schema"]["openAPIV3Schema"]


def _closed(schema: dict) -> dict:
    """``schema`` with unknown fields refused wherever it lists its properties."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def test_the_scaled_object_validates_against_keda_and_is_capped_at_the_partitions(
    rendered: list[dict], settings: Settings
) -> None:
    import jsonschema

    go = shutil.which("go")
    assert go, "go is needed to fetch KEDA's CRDs from the Go module proxy"
    done = subprocess.run(
        [go, "mod", "download", "-json", KEDA_MODULE],
        capture_output=True, text=True, timeout=300, check=False, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    schema = _closed(
        _crd_schema(Path(json.loads(done.stdout)["Dir"]), "keda.sh_scaledobjects.yaml")
    )
    (scaled,) = _kinds(rendered, "ScaledObject")
    jsonschema.validate(scaled, schema)
    partitions = settings.kafka.topics["feed_requests"].partitions
    assert scaled["spec"]["maxReplicaCount"] <= partitions
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["topic"] == "feed_requests"
    assert trigger["metadata"]["consumerGroup"] == settings.serving.group_id


def test_kafka_topics_and_acls_agree_with_the_profile(
    rendered: list[dict], settings: Settings
) -> None:
    topics = {t["spec"]["topicName"]: t["spec"] for t in _kinds(rendered, "KafkaTopic")}
    if not topics:  # values-prod: topics are managed where the Kafka cluster is
        return
    assert set(topics) == set(settings.kafka.topics)
    for name, spec in topics.items():
        assert spec["partitions"] == settings.kafka.topics[name].partitions, name
        assert spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == 2
        assert spec["config"]["max.message.bytes"] == settings.kafka.topics[name].max_message_bytes
    for user in _kinds(rendered, "KafkaUser"):
        for acl in user["spec"]["authorization"]["acls"]:
            if acl["resource"]["type"] == "topic":
                assert acl["resource"]["name"] in settings.kafka.topics, acl
    serve = next(
        u for u in _kinds(rendered, "KafkaUser") if u["metadata"]["name"].endswith("serve")
    )
    groups = [a["resource"]["name"] for a in serve["spec"]["authorization"]["acls"]
              if a["resource"]["type"] == "group"]  # fmt: skip
    assert groups == [settings.serving.group_id]


def test_the_feature_store_config_map_is_the_one_feedrank_builds(
    rendered: list[dict], settings: Settings
) -> None:
    (cm,) = [c for c in _kinds(rendered, "ConfigMap") if c["metadata"]["name"].endswith("store")]
    chart = yaml.safe_load(cm["data"]["feature_store.yaml"])
    (serve,) = [
        d for d in _kinds(rendered, "Deployment") if d["metadata"]["name"].endswith("serve")
    ]
    env = {
        e["name"]: e.get("value") for e in serve["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    # feedrank's own configuration for the container's environment.
    cfg = Settings.model_validate(
        {
            "paths": {"home": env["FEEDRANK_PATHS__HOME"]},
            "redis": {
                "host": env["FEEDRANK_REDIS__HOST"],
                "port": int(env["FEEDRANK_REDIS__PORT"]),
                "password": "from-the-secret",  # secretKeyRef in the chart: no value here
            },
            "feast": {"online_store": "redis", "offline_store": "spark"},
        }
    )
    assert "FEEDRANK_REDIS__PASSWORD" in env and env["FEEDRANK_REDIS__PASSWORD"] is None
    own = feature_store_config(cfg, with_secrets=False)
    for key in (
        "project",
        "provider",
        "registry",
        "online_store",
        "entity_key_serialization_version",
    ):
        assert chart[key] == own[key], key
    assert chart["offline_store"]["type"] == own["offline_store"]["type"]


def test_every_feedrank_setting_the_chart_passes_exists(rendered: list[dict]) -> None:
    """An unknown FEEDRANK_ key makes feedrank refuse to start: render → settings must load."""
    env_names = set()
    for obj in rendered:
        spec = obj.get("spec", {})
        pods = [spec.get("template", {}).get("spec", {})] + [
            spec.get(k, {}) for k in ("driver", "executor")
        ]
        for pod in pods:
            for container in pod.get("containers", [pod]):
                env_names |= {e["name"] for e in container.get("env", [])}
    feedrank_env = sorted(n for n in env_names if n.startswith("FEEDRANK_"))
    assert feedrank_env
    done = subprocess.run(
        [sys.executable, "-c", "from feedrank.config import get_settings; get_settings()"],
        env={"PATH": "/usr/bin:/bin", **{n: _sample(n) for n in feedrank_env}},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def _sample(name: str) -> str:
    """A valid value for a setting the chart passes (its type is what is checked here)."""
    return {"FEEDRANK_PROFILE": "cluster", "FEEDRANK_FEAST__ONLINE_STORE": "redis"}.get(
        name, "9100" if name.endswith("PORT") else "/tmp/feedrank-chart-check"
    )


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    dockerfile = ROOT / "infra" / "docker" / "Dockerfile"
    done = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
