"""The Kubernetes charts against the table of services (deploy/services.toml): the generated values regions
are current, every service of the table is deployed and routed, and a new service is one entry."""

from __future__ import annotations

import importlib.util
import subprocess
from types import ModuleType

import service_table as services
import yaml
from k8s_charts import APP, APP_VERSION, DATA, K8S, NAME, REPO_ROOT, Doc, full, of_kind, render, the

WEBHOOK = services.Service(name="webhook", port=8106, prefixes=("/api/v1/webhooks",), queues=("webhook.deliveries",))


def _load_helm_values() -> ModuleType:
    spec = importlib.util.spec_from_file_location("helm_values", K8S / "helm_values.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helm_values = _load_helm_values()


def test_values_are_what_the_table_makes() -> None:
    stale = helm_values.outdated()
    assert not stale, f"out of date, run `python deploy/k8s/helm_values.py`: {[str(p) for p in stale]}"
    result = subprocess.run(
        ["python3", str(K8S / "helm_values.py"), "--check"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_of_the_table_is_deployed(app_chart: list[Doc], data_chart: list[Doc]) -> None:
    names = services.names()
    expected = {full(n) for n in names}
    for kind in ("Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        found = set(of_kind(app_chart, kind)) - {full("gateway-redis"), full("unavailable")}
        assert found == expected, kind
    assert set(of_kind(app_chart, "NetworkPolicy")) == expected | {full("migrations"), full("gateway-redis")}
    assert set(of_kind(app_chart, "Job")) == {f"{full(n)}-migrate" for n in names}
    for service in services.table():
        deployment = the(app_chart, "Deployment", full(service.name))
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["ports"] == [{"name": "http", "containerPort": service.port, "protocol": "TCP"}]
        assert {"name": "PORT", "value": str(service.port)} in container["env"]
        port = the(app_chart, "Service", full(service.name))["spec"]["ports"]
        assert port == [{"name": "http", "port": service.port, "targetPort": "http", "protocol": "TCP"}]
    roles = the(data_chart, "Cluster", full("postgres"))["spec"]["managed"]["roles"]
    assert [r["name"] for r in roles] == [f"{n}_app" for n in names]
    assert set(of_kind(data_chart, "User")) == set(of_kind(data_chart, "Permission")) == expected
    assert set(of_kind(data_chart, "TopicPermission")) == expected


def test_routes_are_the_table_prefixes(app_chart: list[Doc]) -> None:
    routes = the(app_chart, "IngressRoute", NAME)["spec"]["routes"]
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
    app_chart = render(APP, {"services": {"webhook": values_region["services"]["webhook"]}})
    data_chart = render(DATA, data_region)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
        assert full("webhook") in of_kind(app_chart, kind), kind
    assert (
        the(app_chart, "Job", f"{full('webhook')}-migrate")["spec"]["template"]["spec"]["containers"][0]["command"][-1]
        == "webhook"
    )
    assert the(app_chart, "Deployment", full("webhook"))["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"itsm-webhook:{APP_VERSION}"
    )
    matches = [r["match"] for r in the(app_chart, "IngressRoute", NAME)["spec"]["routes"]]
    assert "Path(`/api/v1/webhooks`) || PathPrefix(`/api/v1/webhooks/`)" in matches
    assert "webhook_app" in [
        r["name"] for r in the(data_chart, "Cluster", full("postgres"))["spec"]["managed"]["roles"]
    ]
    assert full("webhook") in of_kind(data_chart, "User")
