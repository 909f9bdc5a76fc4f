"""Auth tests: the shared fixtures (the `itsm` pytest plugin, itsm_shared.testing_fixtures) set for the auth
service, with its own keys (no test issuer) and its bootstrap admin."""

from __future__ import annotations

import httpx
import pytest

ADMIN_PASSWORD = "bootstrap-admin-password"


@pytest.fixture(scope="session")
def service_name() -> str:
    return "auth"


@pytest.fixture(scope="session")
def trust_test_issuer() -> bool:
    return False


@pytest.fixture(scope="session")
def extra_env() -> dict[str, str]:
    return {"ITSM_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD, "ITSM_LOCKOUT_SECONDS": "900"}


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/token", data={"grant_type": "password", "username": username, "password": password}
    )


async def admin_token(client: httpx.AsyncClient) -> str:
    response = await login(client, "admin", ADMIN_PASSWORD)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
