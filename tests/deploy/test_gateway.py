"""The real Traefik binary with deploy/traefik, started by the harness's own code (deploy/gateway.py), in
front of stub backends on free ports.

Two gateways: `gateway` with the production defaults except a generous API limit, and `strict` with
ITSM_API_RATE_LIMIT=5, ITSM_LOGIN_RATE_LIMIT=10 and an in-flight cap of 2, where one service's
upstream points at a closed port (a stopped service). Traefik keeps one rate-limit bucket per router
and client, so each limit test below uses a router and client address no other test on that gateway uses.

Limit tests assert only what a token bucket guarantees whatever the timing: a fresh bucket lets its burst
through, and in `elapsed` seconds it never lets more through than the burst plus what it refilled (Traefik
also serves a request whose token is due within a short delay, 1/(2*rate) s or at most 0.5 s, hence one
token of slack). A request loop that is not throttled keeps sending until the first 429, bounded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import service_table as services
from gateway import start_gateway
from gateway_stubs import StubServer, stub_backend
from processes import ManagedProcess, free_port, http_status

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
# Every service of the table but audit, which plays "not built": no upstream at all.
LIVE = tuple(name for name in services.names() if name != "audit")


@dataclass
class Gateway:
    url: str
    run_dir: Path
    process: ManagedProcess
    stubs: dict[str, StubServer]

    def client(self, source: str = "127.0.0.1") -> httpx.Client:
        """A client whose connections come from `source` (any 127/8 address is a distinct client)."""
        return httpx.Client(
            base_url=self.url,
            timeout=15,
            transport=httpx.HTTPTransport(local_address=source),
        )


def _start(
    run_dir: Path,
    stubs: dict[str, StubServer],
    upstreams: dict[str, str | None],
    *,
    api_rate_limit: int = 1000,
    login_rate_limit: int = 10,
    extra_env: dict[str, str] | None = None,
) -> Gateway:
    port = free_port()
    process = start_gateway(
        run_dir,
        port=port,
        upstreams=upstreams,
        api_rate_limit=api_rate_limit,
        login_rate_limit=login_rate_limit,
        extra_env=extra_env,
    )
    return Gateway(f"http://127.0.0.1:{port}", run_dir, process, stubs)


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubServer]]:
    with (
        stub_backend("auth") as auth,
        stub_backend("incident") as incident,
        stub_backend("problem") as problem,
        stub_backend("change") as change,
        stub_backend("webhook") as webhook,
    ):
        yield {"auth": auth, "incident": incident, "problem": problem, "change": change, "webhook": webhook}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stubs: dict[str, StubServer]) -> Iterator[Gateway]:
    upstreams: dict[str, str | None] = {name: stubs[name].url for name in LIVE}
    upstreams["audit"] = None
    gw = _start(tmp_path_factory.mktemp("gateway"), stubs, upstreams, api_rate_limit=1000, login_rate_limit=10)
    yield gw
    gw.process.stop(grace=5)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, stubs: dict[str, StubServer]) -> Iterator[Gateway]:
    closed = free_port()  # nothing listens there: a service that was started once and died
    upstreams: dict[str, str | None] = {
        "auth": stubs["auth"].url,
        "incident": stubs["incident"].url,
        "change": stubs["change"].url,
        "problem": f"http://127.0.0.1:{closed}",
        "audit": None,
    }
    gw = _start(
        tmp_path_factory.mktemp("strict"),
        stubs,
        upstreams,
        api_rate_limit=5,
        login_rate_limit=10,
        extra_env={"ITSM_API_MAX_INFLIGHT": "2"},
    )
    yield gw
    gw.process.stop(grace=5)


def assert_security_headers(response: httpx.Response) -> None:
    h = response.headers
    assert h.get("x-content-type-options") == "nosniff"
    assert h.get("x-frame-options") == "DENY"
    assert h.get("referrer-policy") == "no-referrer"
    assert h.get("strict-transport-security", "").startswith("max-age=31536000")
    assert "camera=()" in h.get("permissions-policy", "")
    assert h.get("cache-control") == "no-store"
    csp = h.get("content-security-policy", "")
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "server" not in h
    assert "x-powered-by" not in h


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


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


# ------------------------------------------------------------------------------------------ limits


def most_allowed(burst: int, per_second: float, elapsed: float) -> float:
    """The most requests a token bucket lets through in `elapsed` seconds from full (one token of slack)."""
    return burst + per_second * elapsed + 1


def until_429(send: Callable[[], httpx.Response], limit: int) -> tuple[list[httpx.Response], float]:
    """Responses of `send()` up to and including the first 429 (at most `limit`), and the seconds it took."""
    responses: list[httpx.Response] = []
    start = time.monotonic()
    while len(responses) < limit:
        responses.append(send())
        if responses[-1].status_code == 429:
            break
    return responses, time.monotonic() - start


def test_api_limit_comes_from_the_environment(gateway: Gateway, strict: Gateway) -> None:
    # ITSM_API_RATE_LIMIT=1000 (burst 2000): 30 requests all pass, however slowly they go.
    with gateway.client() as client:
        assert {client.get("/api/v1/sla-policies").status_code for _ in range(30)} == {200}

    # ITSM_API_RATE_LIMIT=5 (burst 10), on a bucket of its own (this router, this client address).
    with strict.client("127.0.0.6") as client:
        responses, elapsed = until_429(lambda: client.get("/api/v1/incidents/x"), limit=500)
    statuses = [r.status_code for r in responses]
    assert statuses[:10] == [200] * 10, "the burst of a fresh bucket"
    assert statuses[-1] == 429, f"no 429 in {len(statuses)} requests in {elapsed:.1f}s"
    assert set(statuses[:-1]) == {200}
    assert statuses.count(200) <= most_allowed(10, 5, elapsed), (statuses.count(200), elapsed)
    limited = responses[-1]
    assert int(limited.headers["retry-after"]) >= 1
    assert_security_headers(limited)

    # Per client: another address has a full bucket of its own on the same route.
    with strict.client("127.0.0.2") as other:
        assert other.get("/api/v1/incidents/x").status_code == 200


def test_login_has_its_own_strict_bucket(strict: Gateway) -> None:
    form = {"grant_type": "password", "username": "admin", "password": "wrong-password"}
    with strict.client() as client:
        # ITSM_LOGIN_RATE_LIMIT=10 per minute, burst 5.
        responses, elapsed = until_429(lambda: client.post("/api/v1/auth/token", data=form), limit=50)
        statuses = [r.status_code for r in responses]
        assert statuses[:5] == [200] * 5, "the burst of a fresh bucket"
        assert statuses[-1] == 429, (statuses, elapsed)
        assert statuses.count(200) <= most_allowed(5, 10 / 60, elapsed), (statuses, elapsed)
        refused = responses[-1]
        assert int(refused.headers["retry-after"]) >= 1
        assert_security_headers(refused)
        # The rest of the auth API is not throttled with it (its own bucket, full: burst 10).
        assert client.get("/api/v1/auth/me").status_code == 200
    # Another client can still log in.
    with strict.client("127.0.0.3") as other:
        assert other.post("/api/v1/auth/token", data=form).status_code == 200


def test_in_flight_cap_is_per_client(strict: Gateway) -> None:
    change = strict.stubs["change"]
    change.release.clear()
    with strict.client() as client, ThreadPoolExecutor(max_workers=2) as pool:
        held = [pool.submit(client.get, "/api/v1/changes/hold") for _ in range(2)]
        try:
            wait_for(lambda: change.holding() == 2)
            third = client.get("/api/v1/changes/x")
            assert third.status_code == 429
            assert_security_headers(third)
            with strict.client("127.0.0.4") as other:
                assert other.get("/api/v1/changes/x").status_code == 200
        finally:
            change.release.set()
        assert [f.result(timeout=15).status_code for f in held] == [200, 200]


# ------------------------------------------------------------------------------------------ headers


def _unmatched_429(strict: Gateway) -> httpx.Response:
    # The catch-all router carries the API limit too; nothing else on `strict` uses its bucket.
    with strict.client("127.0.0.5") as client:
        responses, elapsed = until_429(lambda: client.get("/no-such-page"), limit=500)
    assert responses[-1].status_code == 429, f"no 429 in {len(responses)} requests in {elapsed:.1f}s"
    return responses[-1]


def _request(gw: Gateway, method: str, path: str, content: bytes | None = None) -> httpx.Response:
    with gw.client() as client:
        return client.request(method, path, content=content)


RESPONSES: dict[int, Callable[[Gateway, Gateway], httpx.Response]] = {
    200: lambda gw, strict: _request(gw, "GET", "/api/v1/incidents"),
    404: lambda gw, strict: _request(gw, "GET", "/nothing/here"),
    413: lambda gw, strict: _request(gw, "POST", "/api/v1/auth/users", b"x" * (MIB + 1)),
    429: lambda gw, strict: _unmatched_429(strict),
    503: lambda gw, strict: _request(gw, "GET", "/api/v1/audit/events"),
}


@pytest.mark.parametrize("status", sorted(RESPONSES))
def test_security_headers_on_every_status(gateway: Gateway, strict: Gateway, status: int) -> None:
    response = RESPONSES[status](gateway, strict)
    assert response.status_code == status
    assert_security_headers(response)


class _DocsPage(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.inline_scripts = 0
        self.styles: list[str] = []
        self.icons: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            if a.get("src"):
                self.scripts.append(a["src"] or "")
            else:
                self.inline_scripts += 1
        elif tag == "link" and a.get("rel") == "stylesheet":
            self.styles.append(a.get("href") or "")
        elif tag == "link" and "icon" in (a.get("rel") or ""):
            self.icons.append(a.get("href") or "")


def _csp(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "'self'"


def test_docs_csp_lets_our_swagger_ui_page_render_with_no_third_party_host(gateway: Gateway) -> None:
    # The stub serves the page the services serve (itsm_shared.docs): Swagger UI's files from the service itself.
    with gateway.client() as client:
        response = client.get("/api/v1/incidents/docs")
        api = client.get("/api/v1/incidents")
    assert_security_headers(response)
    csp = _csp(response.headers["content-security-policy"])
    page = _DocsPage()
    page.feed(response.text)
    assert page.scripts and page.styles and page.icons
    assert page.inline_scripts == 0  # Swagger UI is started by a file of its own
    for src in page.scripts:
        assert _origin(src) == "'self'" and src.startswith("/api/v1/incidents/docs/assets/"), src
    for href in page.styles + page.icons:
        assert _origin(href) == "'self'" and href.startswith("/api/v1/incidents/docs/assets/"), href
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert "data:" in csp["img-src"]  # swagger-ui's svg icons
    assert "'self'" in csp["connect-src"]  # openapi.json and the token endpoint, same origin
    # No third-party host anywhere: every source is a keyword ('self', 'none') or data:.
    sources = [s for directive, values in csp.items() if directive.endswith("-src") for s in values]
    assert all(s.startswith("'") or s == "data:" for s in sources), sources
    # The assets go through the docs route, under its policy.
    with gateway.client() as client:
        asset = client.get("/api/v1/incidents/docs/assets/swagger-ui-bundle.js")
    assert asset.headers["content-security-policy"] == response.headers["content-security-policy"]
    # JSON responses keep the strict policy.
    assert "unsafe-inline" not in api.headers["content-security-policy"]
    assert api.headers["content-security-policy"] != response.headers["content-security-policy"]


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
    gw = _start(tmp_path, stubs, {"auth": stubs["auth"].url})
    gw.process.stop(grace=5)
    assert not gw.process.running()
    assert http_status(f"{gw.url}/ping", timeout=1) is None
