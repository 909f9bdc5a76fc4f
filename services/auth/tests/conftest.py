"""Auth tests: the shared fixtures (the `itsm` pytest plugin, itsm_shared.testing_fixtures) set for the auth
service, with its own keys (no test issuer) and its bootstrap admin."""

from __future__ import annotations

import base64
import os

import httpx
import pytest

ADMIN_PASSWORD = "bootstrap-admin-password"
# The key-encryption key of this session's signing keys (the service refuses to start without one).
KEK = base64.urlsafe_b64encode(os.urandom(32)).decode()
# A throttled address's first wait (1 s by default): long enough that no test outruns it on a busy machine.
LOGIN_DELAY_SECONDS = "60"


@pytest.fixture(scope="session")
def service_name() -> str:
    return "auth"


@pytest.fixture(scope="session")
def trust_test_issuer() -> bool:
    return False


@pytest.fixture(scope="session")
def extra_env() -> dict[str, str]:
    return {
        "ITSM_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "ITSM_AUTH_KEK": KEK,
        "ITSM_LOGIN_DELAY_SECONDS": LOGIN_DELAY_SECONDS,
        # Short, so the tests see keys withdrawn and retired within seconds.
        "ITSM_JWKS_REFRESH_SECONDS": "1",
    }


async def login(
    client: httpx.AsyncClient, username: str, password: str, *, address: str | None = None
) -> httpx.Response:
    """A password grant, from `address` as the gateway would report it (X-Forwarded-For) when given."""
    headers = {"X-Forwarded-For": address} if address else None
    return await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": username, "password": password},
        headers=headers,
    )


async def admin_token(client: httpx.AsyncClient) -> str:
    response = await login(client, "admin", ADMIN_PASSWORD)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
