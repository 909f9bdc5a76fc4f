"""The real Traefik binary with deploy/traefik in front of stub backends (gateway_support.py): routing, body
limits, the access log and the configuration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import service_table as services
from gateway_stubs import StubServer
from gateway_support import LIVE, MIB, Gateway, assert_security_headers, start_test_gateway, wait_for
from processes import http_status

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------------------------------ routing


@pytest.mark.parametrize(
    ("service", "prefix"),
    [(name, prefix) for name in LIVE for prefix in services.get(name).prefixes],
)
def test_every_prefix_reaches_its_service_unchanged(gateway: Gateway, service: str, prefix: str) -> None:
    with gateway.client() as client:
        response = client.get(f"{prefix}/some/thing", params={"limit": "5"})
        assert response.status_code == 200
        echo = response.json()
        assert echo["service"] == service
        assert echo["path"] == f"{prefix}/some/thing?limit=5"
        # The bare prefix is routed too (collection endpoints).
        assert client.get(prefix).json()["service"] == service
    assert_security_headers(response)


def test_token_endpoint_and_docs_reach_auth(gateway: Gateway) -> None:
    with gateway.client() as client:
        token = client.post("/api/v1/auth/token", data={"grant_type": "password", "username": "a"})
        assert token.status_code == 200
        assert token.json()["service"] == "auth"
        assert token.json()["method"] == "POST"
        for name in LIVE:
            docs = client.get(services.get(name).docs_path)
            assert docs.status_code == 200
            assert docs.headers["content-type"].startswith("text/html")


def test_service_that_is_not_built_answers_503(gateway: Gateway) -> None:
    with gateway.client() as client:
        for path in ("/api/v1/audit", "/api/v1/audit/events", "/api/v1/audit/docs"):
            response = client.get(path)
            assert response.status_code == 503, path
            assert_security_headers(response)


def test_service_that_is_down_answers_503(strict: Gateway) -> None:
    with strict.client() as client:
        for method in ("GET", "POST"):
            response = client.request(method, "/api/v1/problems/x", json={})
            # Connection refused is 502 in Traefik; the gateway turns it into 503 at once.
            assert response.status_code == 503, method
            assert_security_headers(response)


@pytest.mark.parametrize(
    "path", ["/", "/nope", "/api/v1", "/api/v2/incidents", "/api/v1/authx", "/api/rawdata", "/dashboard/"]
)
def test_unmatched_path_is_404_with_headers_and_no_traefik_api(gateway: Gateway, path: str) -> None:
    with gateway.client() as client:
        response = client.get(path)
    assert response.status_code == 404
    assert response.content == b""
    assert_security_headers(response)


def test_ping(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.get("/ping")
    assert response.status_code == 200
    assert_security_headers(response)


def test_header_aliases_are_rejected(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.get("/api/v1/incidents", headers={"X_Forwarded_For": "10.9.8.7"})
    assert response.status_code == 400


def test_client_cannot_spoof_forwarded_for(gateway: Gateway) -> None:
    with gateway.client() as client:
        echo = client.get("/api/v1/incidents", headers={"X-Forwarded-For": "10.9.8.7"}).json()
    assert "10.9.8.7" not in echo["headers"].get("X-Forwarded-For", "")


# ------------------------------------------------------------------------------------------ bodies


def test_body_of_exactly_one_mib_passes(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.post("/api/v1/incidents", content=b"x" * MIB)
    assert response.status_code == 200
    assert response.json()["body_bytes"] == MIB


def test_body_over_one_mib_is_413(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.post("/api/v1/incidents", content=b"x" * (MIB + 1))
        assert response.status_code == 413
        assert_security_headers(response)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds on a chunked body too
            for _ in range(MIB // 65536 + 1):
                yield b"x" * 65536

        chunked = client.post("/api/v1/changes", content=chunks())
        assert chunked.status_code == 413
        # The login route has the same limit.
        login = client.post("/api/v1/auth/token", content=b"x" * (MIB + 1))
        assert login.status_code == 413


# ------------------------------------------------------------------------------------------ logs


def test_access_log_is_json_without_credentials(gateway: Gateway) -> None:
    secret = "Bearer do-not-log-this-token"
    with gateway.client() as client:
        client.get("/api/v1/changes/logged", headers={"Authorization": secret, "User-Agent": "gateway-test"})
    log = gateway.run_dir / "gateway-access.log"

    def entries() -> list[dict[str, object]]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    wait_for(lambda: any(e.get("RequestPath") == "/api/v1/changes/logged" for e in entries()))
    entry = next(e for e in entries() if e.get("RequestPath") == "/api/v1/changes/logged")
    assert entry["DownstreamStatus"] == 200
    assert entry["RouterName"] == "change@file"
    assert "do-not-log-this-token" not in log.read_text()


def test_configuration_loads_without_errors(gateway: Gateway, strict: Gateway) -> None:
    for gw in (gateway, strict):
        for line in (gw.run_dir / "traefik.log").read_text().splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("level") in ("error", "fatal", "panic"):
                # The body limit logs each refused body; anything else is a configuration problem.
                assert entry.get("middlewareType") == "Buffer", line


def test_gateway_stops_on_request(tmp_path: Path, stubs: dict[str, StubServer]) -> None:
    gw = start_test_gateway(tmp_path, stubs, {"auth": stubs["auth"].url})
    gw.process.stop(grace=5)
    assert not gw.process.running()
    assert http_status(f"{gw.url}/ping", timeout=1) is None
