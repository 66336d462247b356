"""The deployment files stay valid and agree with the code: Kubernetes manifests (one worker
Deployment and KEDA ScaledObject per model version), the GPU Dockerfile and the compose file.

Everything here is offline. Kubernetes objects are checked against the JSON schemas that the
``kubernetes-validate`` package ships (strict: unknown fields are errors); KEDA's custom
resources, which it does not know, are checked field by field. The environment each pod gets
is put together as the kubelet would and read by the real settings classes; queue names come
from ``protocol.keys``, never formatted here.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from kubernetes_validate.utils import resources_from_file  # type: ignore[import-untyped]

from app import create_app
from app.settings import AppSettings
from protocol import topology
from protocol.backend import connect_backend
from protocol.keys import Keys
from protocol.settings import Setting, declared
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
MODEL_LABEL = "queuenet.io/model"
VERSION_LABEL = "queuenet.io/model-version"
SHIPPED_MODELS = {("efficientnet-lite0", "1"), ("efficientnet-lite2", "1")}
"""(QUEUENET_MODEL_NAME, QUEUENET_MODEL_VERSION) of the example worker Deployments."""
DEFAULT_MODEL = "efficientnet-lite0"
DECLARED: dict[str, Setting] = {s.variable: s for s in declared()}
"""Every QUEUENET_* setting (app.settings and worker.settings are imported above)."""

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
BASE: list[Obj] = [obj for _, obj in MANIFESTS]


def get(kind: str, name: str, objects: Sequence[Obj] = BASE) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def of_kind(kind: str, objects: Sequence[Obj] = BASE) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def container(workload: Obj) -> Obj:
    containers: list[Obj] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def name_of(obj: Obj) -> str:
    name: str = obj["metadata"]["name"]
    return name


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


WEB = get("Deployment", "queuenet-web")
REDIS = get("Deployment", "queuenet-redis")
WORKERS = sorted(
    (
        d
        for d in of_kind("Deployment")
        if pod_labels(d).get("app.kubernetes.io/component") == "worker"
    ),
    key=name_of,
)
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


def match_labels(selector: Obj) -> dict[str, str]:
    """A label selector's ``matchLabels``; the tests below compare only those, so there must
    be nothing else (a ``matchExpressions`` would go unchecked)."""
    assert selector.keys() == {"matchLabels"}, selector
    labels: dict[str, str] = selector["matchLabels"]
    return labels


def selected(selector: Mapping[str, str]) -> list[str]:
    """Names of the Deployments whose pods ``selector`` selects."""
    return [name_of(d) for d in of_kind("Deployment") if selector.items() <= pod_labels(d).items()]


def test_selectors_targets_and_ports_line_up() -> None:
    for deployment in of_kind("Deployment"):
        selector = match_labels(deployment["spec"]["selector"])
        assert selector.items() <= pod_labels(deployment).items(), name_of(deployment)

    for service in of_kind("Service"):
        (target,) = selected(service["spec"]["selector"])
        port_names = {p["name"] for p in container(get("Deployment", target))["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    for autoscaler in of_kind("HorizontalPodAutoscaler"):
        ref = autoscaler["spec"]["scaleTargetRef"]
        assert get(ref["kind"], ref["name"])


def test_no_two_deployments_or_budgets_select_each_others_pods() -> None:
    """Each Deployment's selector and topology spread, and each PodDisruptionBudget, select the
    pods of one Deployment only: two model versions' workers never count as each other's."""
    for deployment in of_kind("Deployment"):
        name = name_of(deployment)
        assert selected(match_labels(deployment["spec"]["selector"])) == [name]
        pod = deployment["spec"]["template"]["spec"]
        for constraint in pod.get("topologySpreadConstraints", []):
            assert selected(match_labels(constraint["labelSelector"])) == [name]
    budgets = {
        name_of(b): selected(match_labels(b["spec"]["selector"]))
        for b in of_kind("PodDisruptionBudget")
    }
    # Each budget is named after the one Deployment it covers; every worker has one.
    assert all(targets == [name] for name, targets in budgets.items()), budgets
    assert {name_of(w) for w in WORKERS} <= budgets.keys()


# --- what runs in the pods -------------------------------------------------------------------


def image_user(dockerfile: str) -> tuple[int, int]:
    text = (ROOT / dockerfile).read_text(encoding="utf-8")
    users = re.findall(r"^USER (\d+):(\d+)$", text, flags=re.M)
    assert len(users) == 1, f"{dockerfile}: expected one numeric USER uid:gid"
    return int(users[0][0]), int(users[0][1])


@pytest.mark.parametrize("deployment", [WEB, *WORKERS, REDIS], ids=name_of)
def test_pods_run_unprivileged_on_a_read_only_root(deployment: Obj) -> None:
    check_unprivileged_on_a_read_only_root(
        deployment, writable={"/data"} if deployment is REDIS else {"/tmp"}
    )


def check_unprivileged_on_a_read_only_root(workload: Obj, writable: set[str]) -> None:
    """What every pod of QueueNet's manifests must be; ``writable``: the paths of its
    emptyDirs, the only places it may write."""
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    # Service-link variables of Services named queuenet-* would look like settings.
    assert pod["enableServiceLinks"] is False
    main = container(workload)
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    requests, limits = main["resources"]["requests"], main["resources"]["limits"]
    assert {"cpu", "memory"} <= requests.keys() and "memory" in limits
    # Whatever must be written goes to an emptyDir.
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    mounted = {m["mountPath"] for m in main["volumeMounts"] if m["name"] in empty_dirs}
    assert mounted == writable, name_of(workload)
    # Any other volume is mounted read-only.
    for mount in main["volumeMounts"]:
        assert mount["name"] in empty_dirs or mount.get("readOnly") is True, mount


def test_queuenet_pods_run_as_the_image_user() -> None:
    uid, gid = image_user("Dockerfile")
    assert image_user("Dockerfile.gpu") == (uid, gid) == (10001, 10001)
    for deployment in (WEB, *WORKERS):
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
        assert container(deployment)["image"] == "queuenet:latest"


def quantity(value: str) -> float:
    """A Kubernetes CPU quantity in cores: "2", "500m"."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def pod_env(workload: Obj, objects: Sequence[Obj] = BASE, pod_name: str = "") -> dict[str, str]:
    """The environment the kubelet gives the container of ``workload`` (in pod ``pod_name``):
    envFrom, then env in order, with ``$(VAR)`` expanded from what is defined before it,
    ConfigMaps and Secrets from ``objects`` (Secret values from the example)."""
    main = container(workload)
    configmaps = {name_of(c): c["data"] for c in objects if c["kind"] == "ConfigMap"}
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
        else:
            value = value_from(var["valueFrom"], main, objects, pod_name)
            if value is not None:
                env[var["name"]] = value
    return env


def value_from(source: Obj, main: Obj, objects: Sequence[Obj], pod_name: str) -> str | None:
    """An env entry's ``valueFrom`` as the kubelet resolves it; None: an optional Secret key
    that is not there."""
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        (secret,) = [o for o in objects if o["kind"] == "Secret" and name_of(o) == ref["name"]]
        if ref["key"] in secret["stringData"]:
            value: str = secret["stringData"][ref["key"]]
            return value
        assert ref.get("optional") is True, f"{ref['name']} has no key {ref['key']}"
        return None
    if "fieldRef" in source:
        assert source["fieldRef"]["fieldPath"] == "metadata.name" and pod_name
        return pod_name
    ref = source["resourceFieldRef"]
    assert ref["containerName"] == main["name"]
    section, resource = ref["resource"].split(".")
    cores = quantity(main["resources"][section][resource]) / quantity(ref["divisor"])
    return str(math.ceil(cores))


def settings_names(env: Mapping[str, str]) -> set[str]:
    return {name for name in env if name.startswith("QUEUENET_")}


def tier(deployment: Obj) -> str:
    component = pod_labels(deployment)["app.kubernetes.io/component"]
    assert component in ("web", "worker")
    return component


@pytest.mark.parametrize("deployment", [WEB, *WORKERS], ids=name_of)
def test_every_setting_given_to_a_pod_is_a_declared_one(deployment: Obj) -> None:
    """A misspelt QUEUENET_ variable would be ignored silently; the declarations are the real
    ones. What a Deployment sets itself (not the shared ConfigMap) is read by its own tier."""
    env = pod_env(deployment)
    assert not sorted(settings_names(env) - DECLARED.keys())
    assert not sorted(settings_names(CONFIG["data"]) - DECLARED.keys())
    own = settings_names({var["name"]: "" for var in container(deployment).get("env", [])})
    elsewhere = sorted(n for n in own if DECLARED[n].tier not in ("all", tier(deployment)))
    assert not elsewhere, f"{name_of(deployment)} sets settings another tier reads: {elsewhere}"


def worker_settings(deployment: Obj) -> WorkerSettings:
    return WorkerSettings.from_env(pod_env(deployment))


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
    # POST /predict serves a model that a worker Deployment serves.
    assert settings.default_model == DEFAULT_MODEL
    assert settings.default_model in {worker_settings(w).model_name for w in WORKERS}


def test_one_worker_deployment_per_shipped_model_version() -> None:
    served = [(s.model_name, s.model_version) for s in map(worker_settings, WORKERS)]
    assert sorted(served) == sorted(SHIPPED_MODELS), "a rollout? update SHIPPED_MODELS"


@pytest.mark.parametrize("deployment", WORKERS, ids=name_of)
def test_worker_settings_from_the_pod_environment(deployment: Obj) -> None:
    settings = worker_settings(deployment)
    assert settings.batch_size == int(CONFIG["data"]["QUEUENET_BATCH_SIZE"])
    assert settings.redis.namespace == CONFIG["data"]["QUEUENET_NAMESPACE"]
    # Empty: names default to "{hostname}-{pid}", which `--check` finds by the pod's hostname.
    assert settings.worker_name == ""
    cpu_limit = quantity(container(deployment)["resources"]["limits"]["cpu"])
    assert settings.tf_intra_op_threads == settings.tf_inter_op_threads == math.ceil(cpu_limit)
    check_redis_url(settings.redis.url)


@pytest.mark.parametrize("deployment", WORKERS, ids=name_of)
def test_each_worker_deployment_names_its_model_version(deployment: Obj) -> None:
    """QUEUENET_MODEL, _NAME and _VERSION are set on the Deployment itself (the probes'
    `queuenet worker --check` reads them too), and its names and labels say the same."""
    own = {var["name"] for var in container(deployment)["env"]}
    model_settings = {"QUEUENET_MODEL", "QUEUENET_MODEL_NAME", "QUEUENET_MODEL_VERSION"}
    assert model_settings <= own
    assert not model_settings & CONFIG["data"].keys()  # the ConfigMap is shared by all models
    settings = worker_settings(deployment)
    labels = {MODEL_LABEL: settings.model_name, VERSION_LABEL: settings.model_version}
    assert labels.items() <= match_labels(deployment["spec"]["selector"]).items()
    # Object names are DNS labels: lower case, no "_" or "." (model names may have them).
    version = f"{settings.model_name}-v{settings.model_version}"
    expected = "queuenet-worker-" + re.sub(r"[^a-z0-9-]", "-", version.lower())
    assert name_of(deployment) == expected
    for kind in ("Deployment", "PodDisruptionBudget", "ScaledObject"):
        obj = get(kind, expected)
        assert labels.items() <= obj["metadata"]["labels"].items(), kind
    assert (
        labels.items()
        <= match_labels(get("PodDisruptionBudget", expected)["spec"]["selector"]).items()
    )


def prebuilt_models(dockerfile: str) -> set[str]:
    """The models the image builds into its (read-only) model cache."""
    text = (ROOT / dockerfile).read_text(encoding="utf-8")
    return set(re.findall(r"load_model\('([^']+)'", text))


@pytest.mark.parametrize("deployment", WORKERS, ids=name_of)
def test_a_model_the_image_lacks_is_built_where_the_pod_can_write(deployment: Obj) -> None:
    settings = worker_settings(deployment)
    assert DEFAULT_MODEL in prebuilt_models("Dockerfile")  # the manifests say it is
    if settings.model in prebuilt_models("Dockerfile"):
        return
    pod = deployment["spec"]["template"]["spec"]
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = [
        Path(m["mountPath"])
        for m in container(deployment)["volumeMounts"]
        if m["name"] in empty_dirs
    ]
    assert any(settings.model_cache_dir.is_relative_to(path) for path in writable)


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


BATCH_AND_EXIT_S = 10.0
"""What a stopping worker may need after its drain: the batch in hand when the drain timeout
passes (32 images take Lite2 0.6 s on 2 free cores: 10 s leaves room for a busy node) and
TensorFlow's exit."""
GRACE_MARGIN_S = 5.0


@pytest.mark.parametrize("deployment", WORKERS, ids=name_of)
def test_worker_probes_resources_and_shutdown(deployment: Obj) -> None:
    worker = container(deployment)
    assert worker["command"] == ["queuenet", "worker"]
    startup, liveness = worker["startupProbe"], worker["livenessProbe"]
    # No flags: `--check` looks for this pod's heartbeat among the workers of the model version
    # that the environment names, the version the worker serves.
    check = ["queuenet", "worker", "--check"]
    assert startup["exec"]["command"] == liveness["exec"]["command"] == check
    # Model load and warm-up must fit in the startup budget with room to spare.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    settings = worker_settings(deployment)
    # A missed heartbeat or two is no reason to restart.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 3 * settings.heartbeat_ttl_s
    assert "replicas" not in deployment["spec"]  # KEDA owns it
    assert get("PodDisruptionBudget", name_of(deployment))["spec"]["maxUnavailable"] == 1
    # The last worker of a version answers its queue for up to the drain timeout on SIGTERM;
    # the kubelet must not kill it first.
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.drain_timeout_s + BATCH_AND_EXIT_S + GRACE_MARGIN_S


@pytest.mark.parametrize("deployment", WORKERS, ids=name_of)
def test_worker_metrics_are_scraped_and_its_threads_follow_the_cpu_limit(
    deployment: Obj,
) -> None:
    """Each worker serves its own /metrics on QUEUENET_METRICS_PORT, the port its pod
    annotations give Prometheus; TensorFlow's and LiteRT's threads are the CPU limit, not the
    node's cores."""
    worker = container(deployment)
    settings = worker_settings(deployment)
    (port,) = worker["ports"]
    assert port["name"] == "metrics" and port["containerPort"] == settings.metrics_port > 0
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == METRICS_PATH
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    limit = math.ceil(quantity(worker["resources"]["limits"]["cpu"]))
    assert settings.runtime_threads == settings.tf_intra_op_threads == limit


def memory(value: str) -> float:
    """A Kubernetes memory quantity in bytes: "1536Mi", "2Gi"."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return float(value[:-2]) * units[value[-2:]] if value[-2:] in units else float(value)


def test_each_model_gets_resources_for_its_size() -> None:
    by_model = {worker_settings(w).model_name: container(w)["resources"] for w in WORKERS}
    lite0, lite2 = by_model["efficientnet-lite0"], by_model["efficientnet-lite2"]
    assert lite0["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert lite0["limits"] == {"cpu": "2", "memory": "1536Mi"}
    # Lite2 (260 px, 6.1 M parameters) needs twice Lite0's CPU per image and more memory.
    for section in ("requests", "limits"):
        assert quantity(lite2[section]["cpu"]) == 2 * quantity(lite0[section]["cpu"])
        assert memory(lite2[section]["memory"]) > memory(lite0[section]["memory"])


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


def scaled_objects_of(deployment: Obj) -> list[Obj]:
    return [
        o
        for o in of_kind("ScaledObject")
        if o["spec"]["scaleTargetRef"]["name"] == name_of(deployment)
    ]


def test_every_scaled_object_scales_a_worker_deployment() -> None:
    targets = sorted(o["spec"]["scaleTargetRef"]["name"] for o in of_kind("ScaledObject"))
    assert targets == sorted(name_of(w) for w in WORKERS)


@pytest.mark.parametrize("deployment", WORKERS, ids=name_of)
def test_keda_scales_each_worker_deployment_on_its_own_queue(deployment: Obj) -> None:
    (scaled,) = scaled_objects_of(deployment)
    assert scaled["apiVersion"] == KEDA_API
    assert name_of(scaled) == name_of(deployment)
    spec = scaled["spec"]
    assert spec.keys() <= SCALED_OBJECT_SPEC
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 8)

    (trigger,) = spec["triggers"]
    assert trigger.keys() <= TRIGGER_FIELDS
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert all(isinstance(value, str) for value in metadata.values())  # map[string]string
    # The queue of the model version this Deployment's own environment names, in the
    # namespace of the ConfigMap; the same key the worker (and its `--check`) uses.
    env = pod_env(deployment)
    queue = (
        Keys(CONFIG["data"]["QUEUENET_NAMESPACE"])
        .version(env["QUEUENET_MODEL_NAME"], env["QUEUENET_MODEL_VERSION"])
        .queue()
    )
    assert metadata["listName"] == queue
    settings = worker_settings(deployment)
    assert (
        metadata["listName"]
        == Keys(settings.redis.namespace)
        .version(settings.model_name, settings.model_version)
        .queue()
    )
    # About one batch waiting per worker.
    assert metadata["listLength"] == str(settings.batch_size)
    # Resolved from KEDA's own namespace: the Service's name must be namespace-qualified.
    host, _, port = metadata["address"].rpartition(":")
    assert host.split(".")[:2] == [REDIS_SERVICE["metadata"]["name"], NAMESPACE]
    assert int(port) == REDIS_SERVICE["spec"]["ports"][0]["port"]
    assert metadata["databaseIndex"] == urlsplit(settings.redis.url).path.lstrip("/")

    auth = get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["apiVersion"] == KEDA_API
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password"
    assert ref["key"] in get("Secret", ref["name"])["stringData"]


@functools.cache
def kustomize_objects(directory: Path) -> tuple[Obj, ...]:
    """The objects ``kubectl kustomize`` builds from ``directory``."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return tuple(obj for obj in yaml.safe_load_all(out) if obj)


def kustomize(directory: Path) -> list[str]:
    """The kinds of the objects ``kubectl kustomize`` builds from ``directory``."""
    return [obj["kind"] for obj in kustomize_objects(directory)]


def test_kustomize_builds_the_manifests() -> None:
    assert sorted(kustomize(K8S_DIR)) == sorted(o["kind"] for _, o in MANIFESTS)


def test_the_patch_for_a_cluster_without_keda_drops_only_the_keda_objects(tmp_path: Path) -> None:
    """kustomization.yaml carries a commented-out patch for clusters without KEDA: uncommented,
    it must still build and leave out exactly the KEDA objects."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, copy)
    lines = (K8S_DIR / "kustomization.yaml").read_text(encoding="utf-8").splitlines()
    start = lines.index("# patches:")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("#")), len(lines))
    patch = [line.removeprefix("# ") for line in lines[start:end]]
    (copy / "kustomization.yaml").write_text("\n".join(lines + patch) + "\n", encoding="utf-8")
    expected = sorted(o["kind"] for _, o in MANIFESTS if o["kind"] not in CUSTOM_KINDS)
    assert sorted(kustomize(copy)) == expected


# --- the Sentinel variant: deploy/k8s-sentinel ------------------------------------------------
# A kustomize overlay of deploy/k8s (beside it: kustomize refuses an overlay inside its base's
# directory) in which a Sentinel set replaces the single Redis. Checked on what
# `kubectl kustomize` builds, the objects Kubernetes would get.

SENTINEL_K8S_DIR = ROOT / "deploy" / "k8s-sentinel"
SENTINEL_SET_SCRIPT = SENTINEL_K8S_DIR / "sentinel-set.sh"
SENTINEL_ROLES = ("redis", "sentinel")
"""What sentinel-set.sh runs: its first argument, and the component label of the pods."""
KEDA_SENTINEL_METADATA = {
    "addresses", "hosts", "ports", "sentinelMaster", "listName", "listLength",
    "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl", "addressesFromEnv",
    "hostsFromEnv", "portsFromEnv", "sentinelMasterFromEnv", "usernameFromEnv",
    "passwordFromEnv", "sentinelUsernameFromEnv", "sentinelPasswordFromEnv",
}  # fmt: skip
"""The metadata of KEDA's redis-sentinel trigger (keda.sh, "Redis Lists (supports Redis
Sentinel)"); KEDA would ignore a misspelt one."""
KEDA_SENTINEL_AUTH = {"password", "sentinelPassword"}
"""Its TriggerAuthentication parameters: the master's password and the sentinels'."""


def sentinel_overlay() -> tuple[Obj, ...]:
    return kustomize_objects(SENTINEL_K8S_DIR)


def workloads(objects: Sequence[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def selects(selector: Mapping[str, str], objects: Sequence[Obj]) -> list[str]:
    """Names of the workloads whose pods ``selector`` selects."""
    return [name_of(w) for w in workloads(objects) if selector.items() <= pod_labels(w).items()]


def set_member(role: str, objects: Sequence[Obj]) -> Obj:
    """The StatefulSet whose pods run sentinel-set.sh ``role``."""
    (member,) = [
        s
        for s in of_kind("StatefulSet", objects)
        if pod_labels(s)["app.kubernetes.io/component"] == role
    ]
    return member


def pod_names(statefulset: Obj) -> list[str]:
    return [f"{name_of(statefulset)}-{i}" for i in range(statefulset["spec"]["replicas"])]


def pod_addresses(statefulset: Obj, objects: Sequence[Obj]) -> list[str]:
    """host:port of each pod of ``statefulset`` by its stable name,
    <pod>.<headless Service>.<namespace>.svc, which resolves from any namespace."""
    service = get("Service", statefulset["spec"]["serviceName"], objects)
    (port,) = container(statefulset)["ports"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port["containerPort"]
    assert service_port["targetPort"] == port["name"]
    host = f"{name_of(service)}.{NAMESPACE}.svc"
    return [f"{pod}.{host}:{service_port['port']}" for pod in pod_names(statefulset)]


def set_env(role: str, objects: Sequence[Obj]) -> dict[str, dict[str, str]]:
    """The environment of each pod of the set's ``role``, by pod name."""
    member = set_member(role, objects)
    return {pod: pod_env(member, objects, pod_name=pod) for pod in pod_names(member)}


def sentinel_conf(env: Mapping[str, str]) -> list[list[str]]:
    """The configuration sentinel-set.sh writes for the Sentinel whose environment is ``env``
    when the set starts anew (watching the first Redis), line by line, word by word."""
    first_node = env["REDIS_NODES"].split()[0]
    out = subprocess.run(
        ["sh", str(SENTINEL_SET_SCRIPT), "sentinel-conf", first_node],
        env={**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def check_sentinel_conf(
    env: Mapping[str, str], *, sentinels: int, service_name: str, password: str
) -> str:
    """The checks of one Sentinel's configuration; returns its myid."""
    lines = sentinel_conf(env)
    (monitor,) = [line for line in lines if line[:2] == ["sentinel", "monitor"]]
    _, _, name, host, port, quorum = monitor
    # The master set the clients and KEDA ask for, the first Redis at first.
    assert name == service_name
    assert f"{host}:{port}" == env["REDIS_NODES"].split()[0]
    # Failure detection needs the quorum and a failover a majority of all sentinels: a quorum
    # below a majority would let a minority declare the master down.
    assert int(quorum) == int(env["SENTINEL_QUORUM"])
    assert sentinels // 2 < int(quorum) <= sentinels, f"quorum {quorum} of {sentinels}"
    # Host names, announced and resolved; Sentinel takes a host name in `monitor` only when
    # these come before it.
    before = lines[: lines.index(monitor)]
    assert ["sentinel", "resolve-hostnames", "yes"] in before
    assert ["sentinel", "announce-hostnames", "yes"] in before
    assert ["sentinel", "announce-ip", env["ANNOUNCE_HOST"]] in lines
    (own_port,) = [line[1] for line in lines if line[0] == "port"]
    assert f"{env['ANNOUNCE_HOST']}:{own_port}" in env["SENTINELS"].split()
    # The password of the URL opens the sentinels and the Redis they watch.
    assert ["requirepass", password] in lines
    assert ["sentinel", "auth-pass", name, password] in lines
    (myid,) = [line[2] for line in lines if line[:2] == ["sentinel", "myid"]]
    assert re.fullmatch(r"[0-9a-f]{40}", myid)
    return myid


def test_the_sentinel_overlay_builds_valid_objects() -> None:
    errors = []
    for obj in sentinel_overlay():
        ident = f"{obj['kind']}/{name_of(obj)}"
        if obj["kind"] != "Namespace" and obj["metadata"].get("namespace") != NAMESPACE:
            errors.append(f"{ident} is not in the namespace {NAMESPACE}")
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"] == KEDA_API, ident
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{ident}: {exc}")
    assert not errors, "\n".join(errors)


def test_the_sentinel_overlay_replaces_the_single_redis_whole() -> None:
    """The base's Redis Deployment and Service are gone, everything else of the base is there,
    and nothing names the single Redis any more."""
    objects = sentinel_overlay()
    built = {(o["kind"], name_of(o)) for o in objects}
    single = {("Deployment", name_of(REDIS)), ("Service", name_of(REDIS_SERVICE))}
    assert not single & built
    assert {(o["kind"], name_of(o)) for o in BASE} - single <= built
    text = yaml.safe_dump_all(objects)
    old_host = rf"\b{name_of(REDIS_SERVICE)}(\.{NAMESPACE}(\.svc)?)?:\d"
    assert not re.search(old_host, text), "something still names the single Redis's Service"
    triggers = [t for o in of_kind("ScaledObject", objects) for t in o["spec"]["triggers"]]
    assert triggers and all(t["type"] == "redis-sentinel" for t in triggers)


def test_the_sentinel_overlays_selectors_line_up() -> None:
    """Each workload, budget, spread and Service of the overlay selects the pods of one workload
    only, and each Service's ports are its pods'."""
    objects = sentinel_overlay()
    for workload in workloads(objects):
        name = name_of(workload)
        assert selects(match_labels(workload["spec"]["selector"]), objects) == [name]
        pod = workload["spec"]["template"]["spec"]
        for constraint in pod.get("topologySpreadConstraints", []):
            assert selects(match_labels(constraint["labelSelector"]), objects) == [name]
    for budget in of_kind("PodDisruptionBudget", objects):
        assert len(selects(match_labels(budget["spec"]["selector"]), objects)) == 1
    for service in of_kind("Service", objects):
        (target,) = selects(service["spec"]["selector"], objects)
        (workload,) = [w for w in workloads(objects) if name_of(w) == target]
        port_names = {p["name"] for p in container(workload)["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for statefulset in of_kind("StatefulSet", objects):
        service = get("Service", statefulset["spec"]["serviceName"], objects)
        assert selects(service["spec"]["selector"], objects) == [name_of(statefulset)]


def test_web_and_workers_share_one_sentinel_url_and_shard_count() -> None:
    """The same QUEUENET_REDIS_URL and QUEUENET_SHARDS (set, not left to the default) reach the
    web tier and every worker, as their settings classes read them; the URL names every
    sentinel of the set by its stable name, the master set they watch and the password."""
    objects = sentinel_overlay()
    web = get("Deployment", name_of(WEB), objects)
    workers = [w for w in of_kind("Deployment", objects) if tier(w) == "worker"]
    assert sorted(map(name_of, workers)) == sorted(map(name_of, WORKERS))
    redis_settings = [AppSettings.from_env(pod_env(web, objects)).redis]
    redis_settings += [WorkerSettings.from_env(pod_env(w, objects)).redis for w in workers]
    assert all("QUEUENET_SHARDS" in pod_env(d, objects) for d in (web, *workers))
    (url,) = {s.url for s in redis_settings}
    (shards,) = {s.shards for s in redis_settings}
    assert shards == 1  # one master, one shard

    shape = topology.parse(url)
    assert shape.kind == "sentinel"
    sentinels = set_member("sentinel", objects)
    assert [f"{n.host}:{n.port}" for n in shape.nodes] == pod_addresses(sentinels, objects)
    secrets = get("Secret", "queuenet-secrets", objects)["stringData"]
    assert shape.password == secrets["redis-password"]
    assert shape.db == 0
    for env in set_env("sentinel", objects).values():
        assert shape.service_name == env["SENTINEL_MASTER"]


def test_the_sentinels_watch_the_master_set_of_the_url() -> None:
    """Each sentinel's configuration, as sentinel-set.sh writes it from the pod's environment:
    the master set of the URL (and of the KEDA triggers), a majority quorum, host names, the
    password; and one identity per sentinel."""
    objects = sentinel_overlay()
    web_env = pod_env(get("Deployment", name_of(WEB), objects), objects)
    shape = topology.parse(web_env["QUEUENET_REDIS_URL"])
    sentinels, redis_set = set_member("sentinel", objects), set_member("redis", objects)
    myids = []
    for pod, env in set_env("sentinel", objects).items():
        own = pod_addresses(sentinels, objects)[pod_names(sentinels).index(pod)]
        assert env["ANNOUNCE_HOST"] == own.rpartition(":")[0]
        assert env["SENTINELS"].split() == pod_addresses(sentinels, objects)
        assert env["REDIS_NODES"].split() == pod_addresses(redis_set, objects)
        myids.append(
            check_sentinel_conf(
                env,
                sentinels=sentinels["spec"]["replicas"],
                service_name=shape.service_name,
                password=web_env["REDIS_PASSWORD"],
            )
        )
    assert len(set(myids)) == len(myids)
    for scaled in of_kind("ScaledObject", objects):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"]["sentinelMaster"] == shape.service_name
    # Every Redis announces its own stable name, one of REDIS_NODES.
    for pod, env in set_env("redis", objects).items():
        own = pod_addresses(redis_set, objects)[pod_names(redis_set).index(pod)]
        assert f"{env['ANNOUNCE_HOST']}:{own.rpartition(':')[2]}" == own
        assert env["SENTINEL_MASTER"] == shape.service_name


@pytest.mark.parametrize("deployment", WORKERS, ids=name_of)
def test_keda_scales_each_worker_on_its_queue_through_the_sentinels(deployment: Obj) -> None:
    """One redis-sentinel trigger per queue shard of the worker's model version, each on the
    queue key protocol.keys gives for it (through the backend the worker itself would build),
    through the sentinels and master set of the worker's URL, with both passwords."""
    objects = sentinel_overlay()
    worker = get("Deployment", name_of(deployment), objects)
    settings = WorkerSettings.from_env(pod_env(worker, objects))
    backend = connect_backend(settings.redis)  # clients only: nothing connects yet
    try:
        keys = backend.keys(settings.redis.namespace)
        queues = [
            keys.version(settings.model_name, settings.model_version, shard).queue()
            for shard in range(backend.shards)
        ]
    finally:
        backend.close()
    shape = topology.parse(settings.redis.url)
    (scaled,) = [
        o
        for o in of_kind("ScaledObject", objects)
        if o["spec"]["scaleTargetRef"]["name"] == name_of(worker)
    ]
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["listName"] for t in triggers] == queues
    secrets = get("Secret", "queuenet-secrets", objects)["stringData"]
    for trigger in triggers:
        assert trigger.keys() <= TRIGGER_FIELDS
        assert trigger["type"] == "redis-sentinel"
        metadata = trigger["metadata"]
        assert metadata.keys() <= KEDA_SENTINEL_METADATA
        assert all(isinstance(value, str) for value in metadata.values())
        addresses = metadata["addresses"].split(",")
        assert addresses == [f"{n.host}:{n.port}" for n in shape.nodes]
        # Resolved by the KEDA operator in its own namespace.
        assert all(a.rpartition(":")[0].endswith(f".{NAMESPACE}.svc") for a in addresses)
        assert metadata["sentinelMaster"] == shape.service_name
        assert metadata["databaseIndex"] == str(shape.db)
        # About one batch waiting per worker, over all the shards.
        assert int(metadata["listLength"]) * len(queues) == settings.batch_size
        auth = get("TriggerAuthentication", trigger["authenticationRef"]["name"], objects)
        refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
        assert refs.keys() == KEDA_SENTINEL_AUTH
        for ref in refs.values():
            assert secrets[ref["key"]] == shape.password


@pytest.mark.parametrize("role", SENTINEL_ROLES)
def test_the_sentinel_set_pods(role: str) -> None:
    """Redis and Sentinel pods: unprivileged on a read-only root (they write /data only), the
    script from its ConfigMap, probes that leave room for the waits of the script, enough pods
    and a budget that keeps a promotable replica, or a majority of the sentinels."""
    objects = sentinel_overlay()
    member = set_member(role, objects)
    check_unprivileged_on_a_read_only_root(member, writable={"/data"})
    main = container(member)
    assert main["image"] == "redis:7-alpine"  # Sentinel re-resolves host names since 7.0
    pod = member["spec"]["template"]["spec"]
    (scripts,) = [v for v in pod["volumes"] if "configMap" in v]
    (mount,) = [m["mountPath"] for m in main["volumeMounts"] if m["name"] == scripts["name"]]
    configmap = get("ConfigMap", scripts["configMap"]["name"], objects)
    assert configmap["data"][SENTINEL_SET_SCRIPT.name] == SENTINEL_SET_SCRIPT.read_text()
    assert main["command"] == ["sh", f"{mount}/{SENTINEL_SET_SCRIPT.name}", role]

    (port,) = main["ports"]
    assert main["livenessProbe"]["tcpSocket"]["port"] == port["name"]
    readiness = " ".join(main["readinessProbe"]["exec"]["command"])
    port_option = "" if port["containerPort"] == 6379 else f" -p {port['containerPort']}"
    assert f"redis-cli{port_option} ping" in readiness  # 6379: redis-cli's default
    startup = main["startupProbe"]
    wait_s = int(pod_env(member, objects, pod_name=pod_names(member)[0])["FAILOVER_WAIT_S"])
    assert startup["periodSeconds"] * startup["failureThreshold"] >= wait_s + 20

    replicas = member["spec"]["replicas"]
    (budget,) = [
        b
        for b in of_kind("PodDisruptionBudget", objects)
        if selects(match_labels(b["spec"]["selector"]), objects) == [name_of(member)]
    ]
    if role == "redis":
        assert replicas >= 2  # a master and a replica to promote
        assert budget["spec"]["maxUnavailable"] == 1
    else:
        assert replicas >= 3  # Redis' advice: no fewer, on independent machines
        assert budget["spec"]["minAvailable"] > replicas // 2  # a drain leaves a majority
    service = get("Service", member["spec"]["serviceName"], objects)
    assert service["spec"]["clusterIP"] == "None"  # a name per pod, no virtual address
    assert service["spec"]["publishNotReadyAddresses"] is True  # the set forms before ready


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


COMPOSE_FILES = ["docker-compose.yml", "docker-compose.sentinel.yml"]


def test_every_compose_file_is_checked_here_and_in_ci() -> None:
    assert sorted(p.name for p in ROOT.glob("docker-compose*.y*ml")) == sorted(COMPOSE_FILES)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    validated = re.findall(r"check-jsonschema --builtin-schema vendor.compose-spec (.+)$", ci, re.M)
    assert validated and sorted(" ".join(validated).split()) == sorted(COMPOSE_FILES)


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_compose_file_matches_the_compose_spec(compose_file: str) -> None:
    exe = Path(sys.executable).with_name("check-jsonschema")
    command = str(exe) if exe.exists() else shutil.which("check-jsonschema")
    assert command, "check-jsonschema is not installed (pip install -e '.[dev]')"
    result = subprocess.run(
        [command, "--builtin-schema", "vendor.compose-spec", compose_file],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


COMPOSE: Obj = resources_from_file(str(ROOT / "docker-compose.yml"))[0]
SERVICES: dict[str, Obj] = COMPOSE["services"]
COMPOSE_WORKERS = sorted(
    n for n, s in SERVICES.items() if s.get("command") == ["queuenet", "worker"]
)


def compose_env(service: str, services: Mapping[str, Obj] = SERVICES) -> dict[str, str]:
    """A service's environment with ``${VAR:-default}`` interpolated from its default."""
    env = services[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: write the environment as a mapping"
    return {
        name: re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", str(value))
        for name, value in env.items()
    }


def seconds(duration: str) -> float:
    """A compose duration ("30s", "1m30s") in seconds."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, duration
    return 60.0 * int(parts[1] or 0) + int(parts[2] or 0)


@pytest.mark.parametrize("service", ["web", *COMPOSE_WORKERS])
def test_compose_services_get_declared_settings_of_their_tier(service: str) -> None:
    env = compose_env(service)
    assert not sorted(settings_names(env) - DECLARED.keys())
    role = "worker" if service in COMPOSE_WORKERS else "web"
    elsewhere = sorted(n for n in settings_names(env) if DECLARED[n].tier not in ("all", role))
    assert not elsewhere
    if role == "web":
        assert AppSettings.from_env(env).default_model == DEFAULT_MODEL


@pytest.mark.parametrize("service", COMPOSE_WORKERS)
def test_compose_worker_service_serves_its_model_version(service: str) -> None:
    env = compose_env(service)
    assert {"QUEUENET_MODEL", "QUEUENET_MODEL_NAME", "QUEUENET_MODEL_VERSION"} <= env.keys()
    settings = WorkerSettings.from_env(env)
    assert service.startswith(f"worker-{settings.model_name}")
    worker = SERVICES[service]
    assert worker["healthcheck"]["test"] == ["CMD", "queuenet", "worker", "--check"]
    grace = seconds(worker["stop_grace_period"])
    assert grace >= settings.drain_timeout_s + BATCH_AND_EXIT_S + GRACE_MARGIN_S
    if settings.model not in prebuilt_models("Dockerfile"):
        # The image's cache belongs to root; the container's /tmp is writable.
        assert settings.model_cache_dir.is_relative_to("/tmp")


def test_compose_serves_the_shipped_models() -> None:
    served = [
        (s.model_name, s.model_version)
        for s in (WorkerSettings.from_env(compose_env(n)) for n in COMPOSE_WORKERS)
    ]
    assert sorted(served) == sorted(SHIPPED_MODELS)


def test_scale_instructions_name_compose_services() -> None:
    compose_text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    in_compose = re.findall(r"--scale ([A-Za-z0-9_.-]+)=\d+", compose_text)
    in_readme = re.findall(r"--scale ([A-Za-z0-9_.-]+)=\d+", README)
    assert in_readme, "README.md shows no `docker compose up --scale`"
    assert set(in_compose) | set(in_readme) <= SERVICES.keys()
    assert set(COMPOSE_WORKERS) <= set(in_compose)  # the file shows how to scale each model


# --- the Sentinel variant: docker-compose.sentinel.yml ----------------------------------------

SENTINEL_COMPOSE: Obj = resources_from_file(str(ROOT / "docker-compose.sentinel.yml"))[0]
SENTINEL_SERVICES: dict[str, Obj] = SENTINEL_COMPOSE["services"]
SCRIPT_IN_CONTAINER = f"/scripts/{SENTINEL_SET_SCRIPT.name}"


def compose_role(role: str) -> list[str]:
    """The services of docker-compose.sentinel.yml that run sentinel-set.sh ``role``."""
    return sorted(
        name
        for name, service in SENTINEL_SERVICES.items()
        if service.get("entrypoint") == ["sh", SCRIPT_IN_CONTAINER, role]
    )


def test_the_sentinel_compose_file_runs_the_main_files_services_on_the_set() -> None:
    """The web, worker and nginx services are docker-compose.yml's, but for the Redis URL, the
    shard count and what they wait for: the whole set, in place of the single Redis."""
    the_set = compose_role("redis") + compose_role("sentinel")
    assert "redis" not in SENTINEL_SERVICES
    assert SENTINEL_SERVICES.keys() == (SERVICES.keys() - {"redis"}) | set(the_set)
    switched = {"QUEUENET_REDIS_URL", "QUEUENET_SHARDS"}
    for name in ("web", *COMPOSE_WORKERS, "nginx"):
        main, variant = SERVICES[name], SENTINEL_SERVICES[name]
        rest = {"environment", "depends_on"}
        assert {k: v for k, v in variant.items() if k not in rest} == {
            k: v for k, v in main.items() if k not in rest
        }, name
        env = compose_env(name, SENTINEL_SERVICES)
        assert {k: v for k, v in env.items() if k not in switched} == {
            k: v for k, v in compose_env(name).items() if k not in switched
        }, name
        if name != "nginx":
            healthy = {"condition": "service_healthy"}
            assert variant["depends_on"] == {member: healthy for member in the_set}


def test_the_sentinel_compose_url_names_its_sentinels_and_master_set() -> None:
    """Web and workers share one redis+sentinel:// URL and shard count; the URL lists every
    sentinel service, and each sentinel's configuration (as sentinel-set.sh writes it) watches
    the URL's master set with a majority quorum, announcing its own service name."""
    envs = [compose_env(name, SENTINEL_SERVICES) for name in ("web", *COMPOSE_WORKERS)]
    (url,) = {env["QUEUENET_REDIS_URL"] for env in envs}
    (shards,) = {env.get("QUEUENET_SHARDS") for env in envs}
    assert shards == "1"
    assert {AppSettings.from_env(envs[0]).redis.shards} | {
        WorkerSettings.from_env(env).redis.shards for env in envs[1:]
    } == {1}
    shape = topology.parse(url)
    assert shape.kind == "sentinel"

    sentinels, nodes = compose_role("sentinel"), compose_role("redis")
    assert len(sentinels) >= 3 and len(nodes) >= 2
    set_envs = {name: compose_env(name, SENTINEL_SERVICES) for name in sentinels + nodes}
    for name, env in set_envs.items():
        assert env["ANNOUNCE_HOST"] == name
        assert SENTINEL_SERVICES[name]["volumes"] == [
            f"./{SENTINEL_SET_SCRIPT.relative_to(ROOT)}:{SCRIPT_IN_CONTAINER}:ro"
        ]
    for variable in ("SENTINEL_MASTER", "SENTINELS", "REDIS_NODES", "REDIS_PASSWORD"):
        assert len({env[variable] for env in set_envs.values()}) == 1, variable
    env = set_envs[sentinels[0]]
    assert [f"{n.host}:{n.port}" for n in shape.nodes] == env["SENTINELS"].split()
    assert env["SENTINELS"].split() == [f"{name}:26379" for name in sentinels]
    assert env["REDIS_NODES"].split() == [f"{name}:6379" for name in nodes]
    assert shape.service_name == env["SENTINEL_MASTER"]
    assert shape.password == env["REDIS_PASSWORD"]
    myids = {
        check_sentinel_conf(
            set_envs[name],
            sentinels=len(sentinels),
            service_name=shape.service_name,
            password=shape.password,
        )
        for name in sentinels
    }
    assert len(myids) == len(sentinels)
