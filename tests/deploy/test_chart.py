"""The Helm chart renders, validates against Kubernetes, KEDA and spark-operator schemas, and
agrees with the profile (topics, partitions, ACLs, feature store); the Dockerfile passes hadolint.

Offline: helm is built from the Go module proxy by `make helm`, the Kubernetes schemas ship
with kubernetes-validate, KEDA's and the spark-operator's CRDs come from their Go modules
(``go mod download`` of a pinned tag).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from feedrank.config import Settings, kafka_access
from feedrank.featurestore import feature_store_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "infra" / "helm" / "feedrank"
HELM = ROOT / ".cache" / "go-bin" / "helm"
# Versions checked against (docs/deploy.md names them).
KUBERNETES_VERSION = "1.34.0"
KEDA_MODULE = "github.com/kedacore/keda/v2@v2.18.3"
# The Go proxy has no version list for this module (403), but serves exact tags.
SPARK_OPERATOR_MODULE = "github.com/kubeflow/spark-operator/v2@v2.5.0"
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
def values_file(request: pytest.FixtureRequest) -> str:
    """One of the chart's values files (every test of the rendered chart runs for each)."""
    return request.param


@pytest.fixture(scope="module")
def rendered(values_file: str) -> list[dict]:
    """Every object `helm template` renders with one values file."""
    return [doc for doc in yaml.safe_load_all(_render(values_file)) if doc]


def _merged_values(values_file: str) -> dict:
    """values.yaml overlaid with ``values_file`` as helm merges them (maps deep, rest replaced)."""

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for key, value in over.items():
            both_maps = isinstance(value, dict) and isinstance(base.get(key), dict)
            out[key] = merge(base[key], value) if both_maps else value
        return out

    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(base, yaml.safe_load((CHART / values_file).read_text()))


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


@functools.cache
def _go_module(module: str) -> Path:
    """The source folder of ``module`` (``path@tag``), downloaded from the Go module proxy."""
    go = shutil.which("go")
    assert go, f"go is needed to fetch {module} from the Go module proxy"
    done = subprocess.run(
        [go, "mod", "download", "-json", module],
        capture_output=True, text=True, timeout=300, check=False, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return Path(json.loads(done.stdout)["Dir"])


@functools.cache
def _crd_schema(module: str, crd_file: str) -> dict:
    """The served, stored version's schema of one CRD of ``module`` (config/crd/bases/)."""
    path = _go_module(module) / "config" / "crd" / "bases" / crd_file
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    return version["schema"]["openAPIV3Schema"]


def _closed(schema: dict) -> dict:
    """``schema`` with unknown fields refused wherever it lists its properties (as the API
    server prunes them), except where the CRD keeps unknown fields on purpose."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def test_the_scaled_object_validates_against_keda_and_is_capped_at_the_partitions(
    rendered: list[dict], settings: Settings
) -> None:
    import jsonschema

    schema = _closed(_crd_schema(KEDA_MODULE, "keda.sh_scaledobjects.yaml"))
    (scaled,) = _kinds(rendered, "ScaledObject")
    jsonschema.validate(scaled, schema)
    partitions = settings.kafka.topics["feed_requests"].partitions
    assert scaled["spec"]["maxReplicaCount"] <= partitions
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["topic"] == "feed_requests"
    assert trigger["metadata"]["consumerGroup"] == settings.serving.group_id
    # SCRAM: the scaler logs in as the serve KafkaUser, user name and password by reference.
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    (auth,) = _kinds(rendered, "TriggerAuthentication")
    jsonschema.validate(
        auth, _closed(_crd_schema(KEDA_MODULE, "keda.sh_triggerauthentications.yaml"))
    )
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    (password,) = auth["spec"]["secretTargetRef"]
    (username,) = auth["spec"]["configMapTargetRef"]
    assert (password["parameter"], password["key"]) == ("password", "password")
    users = next(
        c for c in _kinds(rendered, "ConfigMap") if c["metadata"]["name"] == username["name"]
    )
    assert username["parameter"] == "username"
    assert users["data"][username["key"]] == password["name"] == "feedrank-feedrank-serve"


@functools.cache
def _spark_application_validator() -> Any:
    """A validator for the CRD's schema, checked once (``jsonschema.validate`` re-checks the
    12,000-line schema on every call)."""
    import jsonschema

    schema = _closed(
        _crd_schema(SPARK_OPERATOR_MODULE, "sparkoperator.k8s.io_sparkapplications.yaml")
    )
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)


def test_every_spark_application_validates_against_the_spark_operator(
    rendered: list[dict],
) -> None:
    """One SparkApplication per batch job of the values, each valid for the spark-operator's
    CRD (v1beta2) at the pinned tag, unknown fields refused."""
    validator = _spark_application_validator()
    apps = _kinds(rendered, "SparkApplication")
    jobs = yaml.safe_load((CHART / "values.yaml").read_text())["spark"]["jobs"]
    assert {a["metadata"]["labels"]["app.kubernetes.io/component"] for a in apps} == set(jobs)
    for app in apps:
        validator.validate(app)
        assert app["spec"]["mainApplicationFile"].endswith("jobs/spark_entry.py")


def test_the_spark_operator_schema_refuses_a_misspelled_field(rendered: list[dict]) -> None:
    import jsonschema

    app = copy.deepcopy(_kinds(rendered, "SparkApplication")[0])
    driver = app["spec"]["driver"]
    driver["serviceAcount"] = driver.pop("serviceAccount")
    with pytest.raises(jsonschema.ValidationError, match="serviceAcount"):
        _spark_application_validator().validate(app)


def _capacity_plan_unit_costs() -> dict[str, float]:
    """The measured unit costs docs/capacity.md's plan is computed from: the figures of its
    `feedrank bench capacity` command line."""
    text = (ROOT / "docs" / "capacity.md").read_text()
    (command,) = [line for line in text.splitlines() if line.startswith("feedrank bench capacity")]
    args = command.split()
    return {
        option: float(args[args.index(option) + 1])
        for option in ("--serve-cpu-ms", "--spark-rows-per-core-s")
    }


def test_cpu_requests_and_limits_are_the_capacity_plans(
    rendered: list[dict], values_file: str
) -> None:
    """serve's CPU and the Spark executors come from docs/capacity.md's measured unit costs
    through feedrank's own plan arithmetic (serve_cores, spark_cores), not a second copy."""
    from feedrank.capacity_bench import CORE_UTILISATION, serve_cores, spark_cores

    values = _merged_values(values_file)
    plan = values["sizing"]
    measured = _capacity_plan_unit_costs()
    assert plan["serveCpuMsPerRequest"] == measured["--serve-cpu-ms"]
    assert plan["sparkRowsPerCoreSecond"] == measured["--spark-rows-per-core-s"]
    assert plan["coreUtilisation"] == CORE_UTILISATION

    (serve,) = [
        d for d in _kinds(rendered, "Deployment") if d["metadata"]["name"].endswith("-serve")
    ]
    resources = serve["spec"]["template"]["spec"]["containers"][0]["resources"]
    sizing = values["serve"]["sizing"]
    cores = serve_cores(
        sizing["peakRequestsPerSecond"], plan["serveCpuMsPerRequest"], plan["coreUtilisation"]
    )
    millicores = math.ceil(cores * 1000)
    assert resources["requests"]["cpu"] == f"{millicores}m"
    assert resources["limits"]["cpu"] == f"{millicores * sizing['cpuLimitFactor']}m"

    spark = values["spark"]
    executor_cores = spark_cores(
        spark["sizing"]["rowsPerRun"],
        plan["sparkRowsPerCoreSecond"],
        spark["sizing"]["windowMinutes"] * 60,
    )
    apps = _kinds(rendered, "SparkApplication")
    assert apps
    for app in apps:
        executor = app["spec"]["executor"]
        assert executor["cores"] == spark["executor"]["cores"]
        assert executor["instances"] == math.ceil(executor_cores / executor["cores"])
        assert executor["coreLimit"] == str(executor["cores"])


def test_kafka_topics_agree_with_the_profile(rendered: list[dict], settings: Settings) -> None:
    topics = {t["spec"]["topicName"]: t["spec"] for t in _kinds(rendered, "KafkaTopic")}
    if not topics:  # values-prod: topics are managed where the Kafka cluster is
        return
    assert set(topics) == set(settings.kafka.topics)
    for name, spec in topics.items():
        assert spec["partitions"] == settings.kafka.topics[name].partitions, name
        assert spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == 2
        assert spec["config"]["max.message.bytes"] == settings.kafka.topics[name].max_message_bytes


def _acl_bindings(acls: list[dict]) -> set[tuple[str, str, str]]:
    """(resource type, name, operation) of Strimzi ``spec.authorization.acls``."""
    return {
        (acl["resource"]["type"], acl["resource"]["name"], op)
        for acl in acls
        for op in acl["operations"]
    }


def test_kafka_users_are_the_principals_of_the_acl_table(
    rendered: list[dict], settings: Settings
) -> None:
    """feedrank.config.kafka_access is the one declaration: the values' users and every
    rendered KafkaUser carry exactly its ACLs (the simulator is not deployed by the chart)."""
    table = kafka_access(settings.serving.group_id)
    deployed = set(table) - {"simulator"}
    values = yaml.safe_load((CHART / "values.yaml").read_text())["kafka"]["users"]
    assert set(values) == deployed
    for principal, user in values.items():
        acls = [{"resource": {"type": "topic", "name": t}, "operations": ["Read", "Describe"]}
                for t in user.get("read", [])]  # fmt: skip
        acls += [{"resource": {"type": "topic", "name": t}, "operations": ["Write", "Describe"]}
                 for t in user.get("write", [])]  # fmt: skip
        if "group" in user:
            acls.append(
                {"resource": {"type": "group", "name": user["group"]}, "operations": ["Read"]}
            )
        assert _acl_bindings(acls) == table[principal].bindings(), principal
    users = {u["metadata"]["name"]: u for u in _kinds(rendered, "KafkaUser")}
    if not users:  # values-prod: users are managed where the Kafka cluster is
        return
    prefix = "feedrank-feedrank-"  # the username_prefix the chart passes (below)
    assert set(users) == {prefix + p for p in deployed}
    for name, user in users.items():
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        got = _acl_bindings(user["spec"]["authorization"]["acls"])
        assert got == table[name.removeprefix(prefix)].bindings(), name


def _container_env(pod: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}


@pytest.mark.parametrize("deployment", ["serve", "stream-features"])
def test_each_pod_logs_in_as_its_own_kafka_user_from_a_secret_file(
    rendered: list[dict], deployment: str
) -> None:
    principal = deployment  # each Deployment runs the component of the same name
    (found,) = [d for d in _kinds(rendered, "Deployment")
                if d["metadata"]["name"].endswith(f"-{deployment}")]  # fmt: skip
    pod = found["spec"]["template"]["spec"]
    env = _container_env(pod)
    cfg = Settings.model_validate(
        {"kafka": {"security": env["FEEDRANK_KAFKA__SECURITY"],
                   "username_prefix": env["FEEDRANK_KAFKA__USERNAME_PREFIX"],
                   "password_dir": env["FEEDRANK_KAFKA__PASSWORD_DIR"]}}
    )  # fmt: skip
    assert cfg.kafka.security == "scram"
    (volume,) = [v for v in pod["volumes"] if v["name"] == "kafka-credentials"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kafka-credentials"]
    (item,) = volume["secret"]["items"]
    # Strimzi's Secret of the KafkaUser named like the user feedrank logs in as.
    assert volume["secret"]["secretName"] == cfg.kafka.username_prefix + principal
    assert item["key"] == "password"
    assert Path(mount["mountPath"]) / item["path"] == cfg.kafka.password_file(principal)


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


def _pod_envs(rendered: list[dict]) -> list[list[dict]]:
    """The env list of every container the chart renders (Deployments and SparkApplications)."""
    envs = []
    for obj in rendered:
        spec = obj.get("spec", {})
        pods = [spec.get("template", {}).get("spec", {})] + [
            spec.get(k, {}) for k in ("driver", "executor")
        ]
        for pod in pods:
            envs += [c["env"] for c in pod.get("containers", [pod]) if c.get("env")]
    return envs


def test_every_pod_reaches_the_same_mlflow_with_its_login_from_a_secret(
    values_file: str, rendered: list[dict]
) -> None:
    mlflow = _merged_values(values_file)["mlflow"]
    envs = _pod_envs(rendered)
    assert envs
    for env in envs:
        by_name = {e["name"]: e for e in env}
        uri = by_name.get("FEEDRANK_MLFLOW__TRACKING_URI", {}).get("value")
        # Empty in values: the embedded store (no variable); set: every pod has that server.
        assert uri == (mlflow["trackingUri"] or None)
        secret = mlflow["credentialsSecret"]
        for name, key in (("MLFLOW_TRACKING_USERNAME", "usernameKey"),
                          ("MLFLOW_TRACKING_PASSWORD", "passwordKey")):  # fmt: skip
            if not secret["name"]:
                assert name not in by_name
                continue
            assert "value" not in by_name[name], f"{name} must come from a Secret"
            ref = by_name[name]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (secret["name"], secret[key])


def test_every_feedrank_setting_the_chart_passes_exists(rendered: list[dict]) -> None:
    """An unknown FEEDRANK_ key makes feedrank refuse to start: render → settings must load."""
    env_names = {e["name"] for env in _pod_envs(rendered) for e in env}
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
    return {
        "FEEDRANK_PROFILE": "cluster",
        "FEEDRANK_FEAST__ONLINE_STORE": "redis",
        "FEEDRANK_KAFKA__SECURITY": "scram",
    }.get(name, "9100" if name.endswith("PORT") else "/tmp/feedrank-chart-check")


def _airflow_config_options() -> dict[str, set[str]]:
    """Every option of the installed Airflow's configuration and of its installed providers,
    by section: the descriptions Airflow itself reads (config.yml, each provider's info)."""
    import importlib.metadata
    import importlib.util

    (package,) = importlib.util.find_spec("airflow").submodule_search_locations
    path = Path(package) / "config_templates" / "config.yml"
    sections = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    for provider in importlib.metadata.entry_points(group="apache_airflow_provider"):
        sections.update(provider.load()().get("config", {}))
    return {name: set(section["options"]) for name, section in sections.items()}


def test_the_airflow_values_set_only_options_airflow_and_feedrank_know() -> None:
    """What can be checked of infra/helm/airflow-values.yaml without the official chart (not
    served by any registry here, docs/deploy.md): its `config` options exist in the installed
    Airflow and its FEEDRANK_* environment loads as feedrank settings."""
    values = yaml.safe_load((ROOT / "infra" / "helm" / "airflow-values.yaml").read_text())
    known = _airflow_config_options()
    assert "remote_loging" not in known["logging"]  # a misspelling is caught
    for section, options in values["config"].items():
        for option in options:
            assert option in known.get(section, ()), f"[{section}] {option}: not an Airflow option"
    env = {e["name"]: e["value"] for e in values["env"]}
    assert set(env) >= {"FEEDRANK_PROFILE", "FEEDRANK_PATHS__HOME"}
    done = subprocess.run(
        [sys.executable, "-c", "from feedrank.config import get_settings; get_settings()"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (ROOT / values["dags"]["gitSync"]["subPath"]).is_dir()


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    dockerfile = ROOT / "infra" / "docker" / "Dockerfile"
    done = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
