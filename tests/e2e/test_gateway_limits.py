"""Rate limits as configured for production, on a gateway of their own in front of the running auth service:
the shared e2e gateway runs with lifted limits so the other tests are not throttled."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import stack as stack_module
from gateway import start_gateway
from processes import free_port

import services

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


async def test_login_burst_gets_429_with_retry_after(strict_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=strict_gateway, timeout=10) as http:
        form = {"grant_type": "password", "username": "nobody", "password": "irrelevant-password"}
        responses = await asyncio.gather(*[http.post("/api/v1/auth/token", data=form) for _ in range(30)])
        limited = [r for r in responses if r.status_code == 429]
        assert limited, [r.status_code for r in responses]
        assert {r.status_code for r in responses} <= {400, 429}
        assert int(limited[0].headers["retry-after"]) >= 1
        assert_security_headers(limited[0])
        # The API limit is another bucket: the JWKS still answers.
        assert (await http.get("/api/v1/auth/jwks.json")).status_code == 200


async def test_api_rate_limit_comes_from_the_setting(strict_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=strict_gateway, timeout=10) as http:
        responses = await asyncio.gather(*[http.get("/api/v1/auth/jwks.json") for _ in range(60)])
        codes = [r.status_code for r in responses]
        assert codes.count(200) >= 5
        assert 429 in codes
