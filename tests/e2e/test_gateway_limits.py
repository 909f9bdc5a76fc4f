"""Rate limits as configured for production, on a gateway of their own in front of the running auth service:
the shared e2e gateway runs with lifted limits so the other tests are not throttled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import service_table as services
import stack as stack_module
from gateway import start_gateway
from processes import free_port

from .test_auth import assert_security_headers


@pytest.fixture
def strict_gateway(stack: stack_module.Stack, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = start_gateway(
        tmp_path,
        port=port,
        upstreams={services.ISSUER: stack.settings.service_url(services.ISSUER)},
        api_rate_limit=5,
        login_rate_limit=10,
        die_with_parent=True,
    )
    yield f"http://127.0.0.1:{port}"
    process.stop(grace=5)


def most_allowed(burst: int, per_second: float, elapsed: float) -> float:
    """What a token bucket, full at the start, can let through in `elapsed` seconds (one token of slack: Traefik
    also serves a request whose token is due within a short delay). True whatever the timing."""
    return burst + per_second * elapsed + 1


async def test_login_burst_gets_429_with_retry_after(strict_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=strict_gateway, timeout=10) as http:
        form = {"grant_type": "password", "username": "nobody", "password": "irrelevant-password"}
        start = time.monotonic()
        # Fewer at once than the in-flight cap (20), whose 429s carry no Retry-After.
        responses = await asyncio.gather(*[http.post("/api/v1/auth/token", data=form) for _ in range(15)])
        elapsed = time.monotonic() - start
        codes = [r.status_code for r in responses]
        assert set(codes) <= {400, 429}
        # ITSM_LOGIN_RATE_LIMIT=10 per minute, burst 5: 15 requests are far more than it lets through.
        assert codes.count(400) <= most_allowed(5, 10 / 60, elapsed), (codes, elapsed)
        limited = [r for r in responses if r.status_code == 429]
        assert limited, codes
        assert int(limited[0].headers["retry-after"]) >= 1
        assert_security_headers(limited[0])
        # The API limit is another bucket: the JWKS still answers.
        assert (await http.get(services.JWKS_PATH)).status_code == 200


async def test_api_rate_limit_comes_from_the_setting(strict_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=strict_gateway, timeout=10) as http:
        codes: list[int] = []
        start = time.monotonic()
        # Rounds of 15 at once (below the in-flight cap) until the first 429 (ITSM_API_RATE_LIMIT=5, burst 10).
        while 429 not in codes and len(codes) < 600:
            responses = await asyncio.gather(*[http.get(services.JWKS_PATH) for _ in range(15)])
            codes += [r.status_code for r in responses]
        elapsed = time.monotonic() - start
        assert set(codes) <= {200, 429}
        assert 429 in codes, f"no 429 in {len(codes)} requests in {elapsed:.1f}s"
        assert 10 <= codes.count(200) <= most_allowed(10, 5, elapsed), (codes.count(200), elapsed)
