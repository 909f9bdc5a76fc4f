"""The objects the Kubernetes charts render, checked against schemas. Every object of a built-in kind is
validated against the Kubernetes OpenAPI schema of the oldest version the charts support and of the newest one
kubernetes-validate ships (strict: an unknown field is an error). The objects of the operators' kinds (Traefik,
CloudNativePG, RabbitMQ) have no schema there: they are checked against the shapes written below (Traefik's are
also loaded into the real Traefik, tests/deploy/test_k8s_traefik.py). Helm's own lint too."""

from __future__ import annotations

import copy
import json
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
from k8s_charts import APP, DATA, NAMESPACE, OLDEST_KUBERNETES, Doc, full, the, variants

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


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
def test_every_builtin_object_is_valid_kubernetes(version: str) -> None:
    validated: set[str] = set()
    seen: set[str] = set()
    for variant, docs in variants():
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


def test_schema_validation_catches_mistakes(app_chart: list[Doc]) -> None:
    deployment = copy.deepcopy(the(app_chart, "Deployment", full("incident")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, OLDEST_KUBERNETES, strict=True)
    pdb = copy.deepcopy(the(app_chart, "PodDisruptionBudget", full("incident")))
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
    for variant, docs in variants():
        for doc in docs:
            key = (doc["apiVersion"], doc["kind"])
            if doc["apiVersion"].split("/")[0] in {"traefik.io", "postgresql.cnpg.io", "rabbitmq.com"}:
                assert key in CRD_KINDS, f"{variant}: {key} is not a pinned kind of an operator"
            if key in CRD_KINDS:
                errors = _check_shape(doc)
                assert not errors, f"{variant}: {doc['kind']}/{doc['metadata']['name']}: {errors}"
                seen.add(key)
    assert seen == CRD_KINDS


def test_shape_checks_catch_mistakes(app_chart: list[Doc], data_chart: list[Doc]) -> None:
    middleware = copy.deepcopy(the(app_chart, "Middleware", "api-rate-limit"))
    middleware["spec"]["rateLimit"]["averag"] = 5
    assert any("averag" in e for e in _check_shape(middleware))
    two = copy.deepcopy(the(app_chart, "Middleware", "body-limit"))
    two["spec"]["retry"] = {"attempts": 1}
    assert _check_shape(two)
    cluster = copy.deepcopy(the(data_chart, "Cluster", full("postgres")))
    cluster["spec"]["imageName"] = "ghcr.io/cloudnative-pg/postgresql:latest"
    assert _check_shape(cluster)
    cluster["apiVersion"] = "postgresql.cnpg.io/v1beta1"
    assert _check_shape(cluster)


def test_rabbitmq_affinity_is_a_valid_pod_affinity(data_chart: list[Doc]) -> None:
    affinity = the(data_chart, "RabbitmqCluster", full("rabbitmq"))["spec"]["affinity"]
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
