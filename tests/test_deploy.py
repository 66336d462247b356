"""The deployment files stay valid and agree with the code: Kubernetes manifests, the KEDA
autoscaler, the GPU Dockerfile and the compose file.

Everything here is offline. Kubernetes objects are checked against the JSON schemas that the
``kubernetes-validate`` package ships (strict: unknown fields are errors); KEDA's custom
resources, which it does not know, are checked field by field. The environment each pod gets
is put together as the kubelet would and read by the real settings classes.
"""

from __future__ import annotations

import copy
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from kubernetes_validate.utils import resources_from_file  # type: ignore[import-untyped]

from app import create_app
from app.settings import AppSettings
from protocol.keys import Keys
from tests.helpers import ROOT
from worker.settings import WorkerSettings

K8S_DIR = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.37"
"""The newest Kubernetes whose schemas kubernetes-validate 1.37 ships."""
KEDA_API = "keda.sh/v1alpha1"
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication"}
"""KEDA's resources: not in kubernetes-validate, checked by the tests below instead."""
NAMESPACE = "queuenet"
README = (ROOT / "README.md").read_text(encoding="utf-8")

# Routes the probes and the scraper use. /healthz exists; /readyz and /metrics are planned.
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"

Obj = dict[str, Any]


def load_manifests() -> list[tuple[str, Obj]]:
    """(file name, object) for every object in deploy/k8s except the kustomization."""
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path.name, obj) for obj in resources_from_file(str(path))]
    return found


MANIFESTS = load_manifests()


def get(kind: str, name: str) -> Obj:
    matches = [o for _, o in MANIFESTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def of_kind(kind: str) -> list[Obj]:
    return [o for _, o in MANIFESTS if o["kind"] == kind]


def container(deployment: Obj) -> Obj:
    containers: list[Obj] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


WEB = get("Deployment", "queuenet-web")
WORKER = get("Deployment", "queuenet-worker")
REDIS = get("Deployment", "queuenet-redis")
CONFIG = get("ConfigMap", "queuenet-config")
SECRET = get("Secret", "queuenet-secrets")
REDIS_SERVICE = get("Service", "queuenet-redis")


# --- the manifests as Kubernetes sees them ---------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = resources_from_file(str(K8S_DIR / "kustomization.yaml"))
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == NAMESPACE
    files = sorted(p.name for p in K8S_DIR.glob("*.y*ml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files


@pytest.mark.parametrize(
    "obj",
    [o for _, o in MANIFESTS if o["kind"] not in CUSTOM_KINDS],
    ids=lambda o: f"{o['kind']}/{o['metadata']['name']}",
)
def test_object_matches_the_kubernetes_schema(obj: Obj) -> None:
    assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == K8S_VERSION


def test_the_schema_check_catches_mistakes() -> None:
    """A misspelt field or a wrong type fails, so a pass above means something."""
    misspelt = copy.deepcopy(WEB)
    web = container(misspelt)
    web["readinesProbe"] = web.pop("readinessProbe")
    wrong_type = copy.deepcopy(WEB)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30s"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_only_keda_resources_are_custom() -> None:
    custom = {o["kind"] for _, o in MANIFESTS if o["kind"] in CUSTOM_KINDS}
    assert custom == CUSTOM_KINDS
    assert all(o["apiVersion"] == KEDA_API for _, o in MANIFESTS if o["kind"] in CUSTOM_KINDS)


def test_every_object_is_in_the_namespace() -> None:
    assert get("Namespace", NAMESPACE)
    for _, obj in MANIFESTS:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


def test_selectors_targets_and_ports_line_up() -> None:
    deployments = of_kind("Deployment")
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]

    def selected(selector: Mapping[str, str]) -> list[Obj]:
        return [
            d
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]

    for service in of_kind("Service"):
        (target,) = selected(service["spec"]["selector"])
        port_names = {p["name"] for p in container(target)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    for budget in of_kind("PodDisruptionBudget"):
        assert len(selected(budget["spec"]["selector"]["matchLabels"])) == 1
    for autoscaler in of_kind("HorizontalPodAutoscaler"):
        ref = autoscaler["spec"]["scaleTargetRef"]
        assert get(ref["kind"], ref["name"])


# --- what runs in the pods -------------------------------------------------------------------


def image_user(dockerfile: str) -> tuple[int, int]:
    text = (ROOT / dockerfile).read_text(encoding="utf-8")
    users = re.findall(r"^USER (\d+):(\d+)$", text, flags=re.M)
    assert len(users) == 1, f"{dockerfile}: expected one numeric USER uid:gid"
    return int(users[0][0]), int(users[0][1])


@pytest.mark.parametrize("deployment", [WEB, WORKER, REDIS], ids=lambda d: d["metadata"]["name"])
def test_pods_run_unprivileged_on_a_read_only_root(deployment: Obj) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    # Service-link variables of Services named queuenet-* would look like settings.
    assert pod["enableServiceLinks"] is False
    main = container(deployment)
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    requests, limits = main["resources"]["requests"], main["resources"]["limits"]
    assert {"cpu", "memory"} <= requests.keys() and "memory" in limits
    # Whatever must be written goes to an emptyDir.
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    writable = {m["mountPath"] for m in main["volumeMounts"] if m["name"] in empty_dirs}
    assert writable == ({"/data"} if deployment is REDIS else {"/tmp"})


def test_queuenet_pods_run_as_the_image_user() -> None:
    uid, gid = image_user("Dockerfile")
    assert image_user("Dockerfile.gpu") == (uid, gid) == (10001, 10001)
    for deployment in (WEB, WORKER):
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
        assert container(deployment)["image"] == "queuenet:latest"


def quantity(value: str) -> float:
    """A Kubernetes CPU quantity in cores: "2", "500m"."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def pod_env(deployment: Obj) -> dict[str, str]:
    """The environment the kubelet gives the container: envFrom, then env in order, with
    ``$(VAR)`` expanded from what is defined before it, Secret values from the example."""
    main = container(deployment)
    configmaps = {c["metadata"]["name"]: c["data"] for c in of_kind("ConfigMap")}
    secrets = {s["metadata"]["name"]: s["stringData"] for s in of_kind("Secret")}
    env: dict[str, str] = {}
    for source in main.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in env, f"$({name}) is used before it is defined"
        return env[name]

    for var in main.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, var["value"])
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            if ref["key"] in secrets[ref["name"]]:
                env[var["name"]] = secrets[ref["name"]][ref["key"]]
            else:
                assert ref.get("optional") is True, f"{ref['name']} has no key {ref['key']}"
        else:
            ref = var["valueFrom"]["resourceFieldRef"]
            assert ref["containerName"] == main["name"]
            section, resource = ref["resource"].split(".")
            cores = quantity(main["resources"][section][resource]) / quantity(ref["divisor"])
            env[var["name"]] = str(math.ceil(cores))
    return env


def settings_names(env: Mapping[str, str]) -> set[str]:
    return {name for name in env if name.startswith("QUEUENET_")}


@pytest.mark.parametrize("deployment", [WEB, WORKER], ids=lambda d: d["metadata"]["name"])
def test_every_setting_given_to_a_pod_is_a_documented_one(deployment: Obj) -> None:
    """A misspelt QUEUENET_ variable would be ignored silently; README lists the real ones."""
    names = settings_names(pod_env(deployment)) | settings_names(CONFIG["data"])
    undocumented = sorted(name for name in names if f"`{name}`" not in README)
    assert not undocumented


def check_redis_url(url: str) -> None:
    parts = urlsplit(url)
    port = REDIS_SERVICE["spec"]["ports"][0]["port"]
    assert (parts.scheme, parts.hostname, parts.port) == ("redis", "queuenet-redis", port)
    assert parts.password == SECRET["stringData"]["redis-password"]


def test_web_settings_from_the_pod_environment() -> None:
    settings = AppSettings.from_env(pod_env(WEB))
    assert settings.host == "0.0.0.0"
    (port,) = container(WEB)["ports"]
    assert settings.port == port["containerPort"]
    assert settings.redis.namespace == CONFIG["data"]["QUEUENET_NAMESPACE"]
    assert settings.log_format == "json"
    check_redis_url(settings.redis.url)


def test_worker_settings_from_the_pod_environment() -> None:
    settings = WorkerSettings.from_env(pod_env(WORKER))
    assert settings.batch_size == int(CONFIG["data"]["QUEUENET_BATCH_SIZE"])
    assert settings.redis.namespace == CONFIG["data"]["QUEUENET_NAMESPACE"]
    # Empty: names default to "{hostname}-{pid}", which `--check` finds by the pod's hostname.
    assert settings.worker_name == ""
    cpu_limit = quantity(container(WORKER)["resources"]["limits"]["cpu"])
    assert settings.tf_intra_op_threads == settings.tf_inter_op_threads == math.ceil(cpu_limit)
    check_redis_url(settings.redis.url)


def test_redis_requires_the_secret_password_and_keeps_nothing_on_disk() -> None:
    redis = container(REDIS)
    assert redis["image"] == "redis:7-alpine"
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    assert pod_env(REDIS)["REDIS_PASSWORD"] == SECRET["stringData"]["redis-password"]


def test_the_example_secret_is_an_obvious_placeholder() -> None:
    password = SECRET["stringData"]["redis-password"]
    assert "REPLACE-ME" in password
    # It goes into a redis:// URL unescaped.
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", password)


# --- the web tier ----------------------------------------------------------------------------


def test_web_probes_and_scraping_use_the_apps_routes() -> None:
    app = create_app(AppSettings.from_env(pod_env(WEB)))  # the Redis client connects lazily
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    web = container(WEB)
    liveness, readiness = web["livenessProbe"]["httpGet"], web["readinessProbe"]["httpGet"]
    assert liveness["path"] == LIVENESS_PATH and LIVENESS_PATH in routes
    assert readiness["path"] == READINESS_PATH
    assert liveness["port"] == readiness["port"] == "http"
    (port,) = web["ports"]
    assert port["name"] == "http"
    annotations = WEB["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == METRICS_PATH
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert web["command"] == ["queuenet", "web"]


def test_web_service_autoscaler_and_budget() -> None:
    service = get("Service", "queuenet-web")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    autoscaler = get("HorizontalPodAutoscaler", "queuenet-web")["spec"]
    assert autoscaler["scaleTargetRef"]["name"] == WEB["metadata"]["name"]
    assert (autoscaler["minReplicas"], autoscaler["maxReplicas"]) == (2, 10)
    (metric,) = autoscaler["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert "replicas" not in WEB["spec"]  # the autoscaler owns it
    budget = get("PodDisruptionBudget", "queuenet-web")["spec"]
    assert budget["minAvailable"] == 1 < autoscaler["minReplicas"]


# --- the workers -----------------------------------------------------------------------------


def test_worker_probes_resources_and_shutdown() -> None:
    worker = container(WORKER)
    assert worker["command"] == ["queuenet", "worker"]
    startup, liveness = worker["startupProbe"], worker["livenessProbe"]
    check = ["queuenet", "worker", "--check"]
    assert startup["exec"]["command"] == liveness["exec"]["command"] == check
    # Model load and warm-up must fit in the startup budget with room to spare.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    # A missed heartbeat or two (TTL QUEUENET_HEARTBEAT_TTL_S = 10 s) is no reason to restart.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 3 * 10
    assert worker["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert worker["resources"]["limits"]["memory"] == "1536Mi"
    assert WORKER["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    assert "replicas" not in WORKER["spec"]  # KEDA owns it
    assert get("PodDisruptionBudget", "queuenet-worker")["spec"]["maxUnavailable"] == 1


SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}


def test_keda_scales_the_workers_on_the_request_queue() -> None:
    scaled = get("ScaledObject", "queuenet-worker")
    assert scaled["apiVersion"] == KEDA_API
    spec = scaled["spec"]
    assert spec.keys() <= SCALED_OBJECT_SPEC
    target = spec["scaleTargetRef"]
    assert target["name"] == WORKER["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 8)

    (trigger,) = spec["triggers"]
    assert trigger.keys() <= TRIGGER_FIELDS
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert all(isinstance(value, str) for value in metadata.values())  # map[string]string
    assert metadata["listName"] == Keys().queue()
    assert metadata["listName"] == Keys(CONFIG["data"]["QUEUENET_NAMESPACE"]).queue()
    assert metadata["listLength"] == "32" == CONFIG["data"]["QUEUENET_BATCH_SIZE"]
    # Resolved from KEDA's own namespace: the Service's name must be namespace-qualified.
    host, _, port = metadata["address"].rpartition(":")
    assert host.split(".")[:2] == [REDIS_SERVICE["metadata"]["name"], NAMESPACE]
    assert int(port) == REDIS_SERVICE["spec"]["ports"][0]["port"]

    auth = get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["apiVersion"] == KEDA_API
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password"
    assert ref["key"] in get("Secret", ref["name"])["stringData"]


def test_kustomize_builds_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert len(re.findall(r"^kind: ", out, flags=re.M)) == len(MANIFESTS)


# --- images and compose ----------------------------------------------------------------------


def test_gpu_image_installs_everything_but_tensorflow_cpu() -> None:
    """Run the Dockerfile's own requirement filter on pyproject.toml."""
    if sys.version_info < (3, 11):
        pytest.skip("the filter uses tomllib (Python 3.11+), like the image's Python")
    import tomllib

    dockerfile = (ROOT / "Dockerfile.gpu").read_text(encoding="utf-8")
    (code,) = re.findall(r'python -c "(import re, tomllib;[^"]*)"', dockerfile)
    code = code.replace("/tmp/queuenet/pyproject.toml", str(ROOT / "pyproject.toml"))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    with (ROOT / "pyproject.toml").open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    assert any(d.startswith("tensorflow-cpu") for d in dependencies)
    assert out.splitlines() == [d for d in dependencies if not d.startswith("tensorflow-cpu")]
    assert "pip install --no-cache-dir --no-deps /tmp/queuenet" in joined_lines(dockerfile)
    assert re.search(r'^CMD \["queuenet", "worker"\]$', dockerfile, flags=re.M)


def joined_lines(dockerfile: str) -> str:
    """The Dockerfile with its line continuations joined."""
    return re.sub(r"\\\n\s*", "", dockerfile)


def test_compose_file_matches_the_compose_spec() -> None:
    exe = Path(sys.executable).with_name("check-jsonschema")
    command = str(exe) if exe.exists() else shutil.which("check-jsonschema")
    assert command, "check-jsonschema is not installed (pip install -e '.[dev]')"
    result = subprocess.run(
        [command, "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
