"""Issue #11, finding 6, the attack: a service client's access tokens, already issued, outlive the client being
disabled, re-keyed, given other roles or deleted. Each of these now revokes them: another service (its own
TokenVerifier over auth's JWKS, as every service verifies) refuses them within one JWKS refresh interval, even a
token it had already verified and cached; the auth service at once. A user disabled, re-roled or given a new
password is revoked the same way."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import jwt
import pytest
from auth import revocations
from fastapi import FastAPI
from itsm_shared.auth import JWKSCache, TokenVerifier, subject_digest
from itsm_shared.db import transaction
from itsm_shared.errors import Unauthorized
from itsm_shared.testing import eventually

from .conftest import admin_token, bearer, login
from .test_clients import CLIENTS, grant, new_client

REFRESH_SECONDS = 0.5
JWKS = "http://auth.test/api/v1/auth/jwks.json"

Change = Callable[[httpx.AsyncClient, str, dict[str, str]], Awaitable[httpx.Response]]


async def disable(client: httpx.AsyncClient, admin: str, svc: dict[str, str]) -> httpx.Response:
    return await client.patch(f"{CLIENTS}/{svc['client_id']}", headers=bearer(admin), json={"active": False})


async def rotate(client: httpx.AsyncClient, admin: str, svc: dict[str, str]) -> httpx.Response:
    return await client.post(f"{CLIENTS}/{svc['client_id']}/rotate-secret", headers=bearer(admin))


async def reroll(client: httpx.AsyncClient, admin: str, svc: dict[str, str]) -> httpx.Response:
    return await client.patch(f"{CLIENTS}/{svc['client_id']}", headers=bearer(admin), json={"roles": ["auditor"]})


async def remove(client: httpx.AsyncClient, admin: str, svc: dict[str, str]) -> httpx.Response:
    return await client.delete(f"{CLIENTS}/{svc['client_id']}", headers=bearer(admin))


@pytest.fixture
async def cache(client: httpx.AsyncClient) -> AsyncIterator[JWKSCache]:
    async with JWKSCache(JWKS, client=client, refresh_seconds=REFRESH_SECONDS) as keys:
        yield keys


@pytest.fixture
def elsewhere(cache: JWKSCache) -> TokenVerifier:
    """Another service's verifier: a JWKSCache over auth's JWKS, reloaded every REFRESH_SECONDS."""
    return TokenVerifier(cache, issuer="itsm-auth", audience="itsm")


async def refused(verifier: TokenVerifier, token: str) -> bool:
    """Whether the verifier refuses the token as revoked (not for another reason)."""
    try:
        await verifier.verify(token)
    except Unauthorized as exc:
        return str(exc) == "token revoked"
    return False


async def client_token(client: httpx.AsyncClient, svc: dict[str, str], secret: str | None = None) -> str:
    response = await grant(client, svc["client_id"], secret or svc["client_secret"])
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.mark.parametrize("change", [disable, rotate, reroll, remove], ids=["disabled", "rotated", "roles", "deleted"])
async def test_a_cut_off_clients_tokens_are_refused_by_another_service_within_the_refresh_interval(
    client: httpx.AsyncClient, elsewhere: TokenVerifier, change: Change
) -> None:
    admin = await admin_token(client)
    svc = await new_client(client, admin, ["agent"])
    cached = await client_token(client, svc)
    unseen = await client_token(client, svc)
    await elsewhere.verify(cached)  # verified and cached before the change
    assert (await client.get("/api/v1/auth/me", headers=bearer(cached))).status_code == 200
    changed = await change(client, admin, svc)
    assert changed.status_code in (200, 204), changed.text
    changed_at = time.monotonic()
    await eventually(lambda: refused(elsewhere, cached), timeout=REFRESH_SECONDS + 3, what="cached token refused")
    assert time.monotonic() - changed_at < REFRESH_SECONDS + 3
    assert await refused(elsewhere, unseen)
    assert await refused(elsewhere, cached)  # and stays refused
    # The auth service itself refuses them at once (it reloads after the change commits).
    me = await client.get("/api/v1/auth/me", headers=bearer(unseen))
    assert me.status_code == 401 and "revoked" in me.text
    # The published document names the subject by its digest only.
    document = (await client.get("/api/v1/auth/jwks.json")).json()
    subject = jwt.decode(cached, options={"verify_signature": False})["sub"]
    assert subject_digest(subject) in {r["sub_sha256"] for r in document["revoked"]}
    assert subject not in str(document) and svc["client_id"] not in str(document)


async def test_a_token_issued_after_the_change_works_at_once(
    client: httpx.AsyncClient, elsewhere: TokenVerifier
) -> None:
    """Re-enabled (or re-keyed) right away, even within the second of the revocation: the new tokens verify
    everywhere while the old ones stay refused."""
    admin = await admin_token(client)
    svc = await new_client(client, admin, ["agent"])
    old = await client_token(client, svc)
    await elsewhere.verify(old)
    path = f"{CLIENTS}/{svc['client_id']}"
    assert (await client.patch(path, headers=bearer(admin), json={"active": False})).status_code == 200
    assert (await client.patch(path, headers=bearer(admin), json={"active": True})).status_code == 200
    fresh = await client_token(client, svc)
    rotated = await rotate(client, admin, svc)
    after_rotation = await client_token(client, svc, rotated.json()["client_secret"])
    await eventually(lambda: refused(elsewhere, old), timeout=REFRESH_SECONDS + 3, what="old token refused")
    assert (await elsewhere.verify(after_rotation)).kind == "client"
    assert (await client.get("/api/v1/auth/me", headers=bearer(after_rotation))).status_code == 200
    # `fresh` was issued before the rotation: the rotation revoked it too.
    assert await refused(elsewhere, fresh)


async def test_a_name_change_revokes_nothing(
    client: httpx.AsyncClient, cache: JWKSCache, elsewhere: TokenVerifier
) -> None:
    admin = await admin_token(client)
    svc = await new_client(client, admin, ["agent"])
    token = await client_token(client, svc)
    renamed = await client.patch(f"{CLIENTS}/{svc['client_id']}", headers=bearer(admin), json={"name": "renamed"})
    assert renamed.status_code == 200
    await cache.refresh(fresh=True)
    assert (await elsewhere.verify(token)).kind == "client"


async def test_a_user_with_a_new_password_has_their_tokens_refused_elsewhere(
    client: httpx.AsyncClient, elsewhere: TokenVerifier
) -> None:
    admin = await admin_token(client)
    created = await client.post(
        "/api/v1/auth/users",
        headers=bearer(admin),
        json={"username": f"rv{time.time_ns()}", "password": "long enough password", "roles": ["agent"]},
    )
    assert created.status_code == 201, created.text
    user = created.json()
    token = (await login(client, user["username"], "long enough password")).json()["access_token"]
    await elsewhere.verify(token)
    changed = await client.patch(
        f"/api/v1/auth/users/{user['id']}", headers=bearer(admin), json={"password": "another long password"}
    )
    assert changed.status_code == 200, changed.text
    await eventually(lambda: refused(elsewhere, token), timeout=REFRESH_SECONDS + 3, what="user's token refused")
    fresh = (await login(client, user["username"], "another long password")).json()["access_token"]
    assert str((await elsewhere.verify(fresh)).id) == user["id"]


async def test_two_changes_within_one_second_never_share_a_not_before(app: FastAPI) -> None:
    """The CI failure of 2026-11-30: re-enabled at hh:mm:06.6 (not_before 07, so the next token was dated 07), a
    token issued at 06.8, rotated at 06.9: the rotation's not_before was 07 again and did not catch that token."""
    subject = uuid.uuid4()
    async with transaction(app.state.sessions) as session:
        first = await revocations.revoke_subject(session, subject, "client")
        second = await revocations.revoke_subject(session, subject, "client")
    assert second == first + 1
