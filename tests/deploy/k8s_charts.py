"""The Kubernetes deployment (deploy/k8s: the itsm and itsm-data Helm charts) rendered offline, for the
tests/deploy/test_k8s_*.py modules.

The charts are rendered by Helm's own template engine (Helm 4's Go SDK, through the helm-python-sdk wheel of
the dev group: no helm binary, no cluster). `render` gives a chart's objects as `helm template` prints them;
`variants` every object either chart can render. The module-scoped fixtures `app_chart`, `data_chart` and
`app_values` (tests/deploy/conftest.py) are made from these.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
APP = K8S / "itsm"
DATA = K8S / "itsm-data"
NAMESPACE = "itsm"
NAME = "itsm"
OLDEST_KUBERNETES = "1.30.0"  # kubeVersion of both charts
APP_VERSION = yaml.safe_load((APP / "Chart.yaml").read_text())["appVersion"]

Doc = dict[str, Any]


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


def variants() -> list[tuple[str, list[Doc]]]:
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


def env_of(container: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in container.get("env", [])}
