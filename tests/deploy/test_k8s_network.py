"""The network of the itsm chart: the NetworkPolicies allow only what each service needs, the gateway's rate
limits share a Redis only with several gateway replicas, and Traefik's own chart values match the gateway of
deploy/traefik."""

from __future__ import annotations

from typing import Any

import service_table as services
import yaml
from gateway import TRAEFIK_STATIC
from k8s_charts import APP, K8S, Doc, env_of, full, of_kind, render, the


def _peers(rule: Doc, key: str) -> list[Doc]:
    peers: list[Doc] = rule[key]
    return peers


def test_network_policies_allow_only_what_each_service_needs(app_chart: list[Doc], app_values: dict[str, Any]) -> None:
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
    issuer_pods = the(app_chart, "Deployment", full(issuer.name))["spec"]["selector"]["matchLabels"]
    jwks = {"to": [{"podSelector": {"matchLabels": issuer_pods}}], "ports": [{"port": issuer.port, "protocol": "TCP"}]}
    for name in services.names():
        policy = the(app_chart, "NetworkPolicy", full(name))["spec"]
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
    migrations = the(app_chart, "NetworkPolicy", full("migrations"))["spec"]
    assert migrations["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "itsm",
        "app.kubernetes.io/component": "migration",
    }
    assert migrations["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in migrations
    assert migrations["egress"] == [postgres, dns]
    job_labels = the(app_chart, "Job", f"{full('auth')}-migrate")["spec"]["template"]["metadata"]["labels"]
    assert migrations["podSelector"]["matchLabels"].items() <= job_labels.items()
    # The peers name what the itsm-data chart and Traefik's chart run.
    assert app_values["postgres"]["cluster"] == "itsm-postgres" and app_values["rabbitmq"]["cluster"] == "itsm-rabbitmq"


def test_rate_limits_share_redis_only_with_several_gateway_replicas(app_chart: list[Doc]) -> None:
    for name in ("api-rate-limit", "login-rate-limit"):
        limit = the(app_chart, "Middleware", name)["spec"]["rateLimit"]
        assert limit["redis"] == {"endpoints": ["itsm-gateway-redis.itsm.svc:6379"], "secret": "itsm-gateway-redis"}
    redis = the(app_chart, "Deployment", full("gateway-redis"))
    assert the(app_chart, "Service", full("gateway-redis"))["spec"]["ports"][0]["port"] == 6379
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "itsm-gateway-redis",
        "key": "password",
    }
    policy = the(app_chart, "NetworkPolicy", full("gateway-redis"))["spec"]
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
