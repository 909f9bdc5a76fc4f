"""The gateway under test for tests/deploy/test_gateway*.py: the real Traefik binary with deploy/traefik,
started by the harness's own code (deploy/gateway.py), in front of stub backends on free ports (gateway_stubs.py).

Two gateways, session fixtures of tests/deploy/conftest.py: `gateway` with the production defaults except a
generous API limit, and `strict` with ITSM_API_RATE_LIMIT=5, ITSM_LOGIN_RATE_LIMIT=10 and an in-flight cap of
2, where one service's upstream points at a closed port (a stopped service). Traefik keeps one rate-limit bucket
per router and client, so each limit test uses a router and client address no other test on that gateway uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import service_table as services
from gateway import start_gateway
from gateway_stubs import StubServer
from processes import ManagedProcess, free_port

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


def start_test_gateway(
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


def until_429(send: Callable[[], httpx.Response], limit: int) -> tuple[list[httpx.Response], float]:
    """Responses of `send()` up to and including the first 429 (at most `limit`), and the seconds it took."""
    responses: list[httpx.Response] = []
    start = time.monotonic()
    while len(responses) < limit:
        responses.append(send())
        if responses[-1].status_code == 429:
            break
    return responses, time.monotonic() - start
