"""Issue #11, finding 6: service clients can be disabled, given new roles, have their secret rotated and be
deleted, each taking away what the client holds (its secret; its issued access tokens are revoked everywhere:
test_client_revocation.py)."""

from __future__ import annotations

import httpx
from itsm_shared.testing import Listen

from .conftest import admin_token, bearer

CLIENTS = "/api/v1/auth/clients"


async def grant(client: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    return await client.post("/api/v1/auth/token", data=form)


async def new_client(client: httpx.AsyncClient, admin: str, roles: list[str]) -> dict[str, str]:
    created = await client.post(CLIENTS, headers=bearer(admin), json={"name": "monitoring", "roles": roles})
    assert created.status_code == 201, created.text
    return dict(created.json())


async def test_a_disabled_client_gets_no_token(client: httpx.AsyncClient, listen: Listen) -> None:
    admin = await admin_token(client)
    probe = await listen("auth.client_updated")
    svc = await new_client(client, admin, ["agent"])
    path = f"{CLIENTS}/{svc['client_id']}"
    assert (await grant(client, svc["client_id"], svc["client_secret"])).status_code == 200
    current = await client.get(path, headers=bearer(admin))
    assert current.status_code == 200 and current.headers["etag"] == '"1"' and "client_secret" not in current.json()
    disabled = await client.patch(path, headers={**bearer(admin), "If-Match": '"1"'}, json={"active": False})
    assert disabled.status_code == 200 and disabled.json()["active"] is False and disabled.headers["etag"] == '"2"'
    refused = await grant(client, svc["client_id"], svc["client_secret"])
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    stale = await client.patch(path, headers={**bearer(admin), "If-Match": '"1"'}, json={"active": True})
    assert stale.status_code == 412
    enabled = await client.patch(path, headers=bearer(admin), json={"active": True, "roles": ["auditor"]})
    assert enabled.status_code == 200 and enabled.json()["roles"] == ["auditor"]
    token = await grant(client, svc["client_id"], svc["client_secret"])
    assert token.status_code == 200 and token.json()["scope"] == "auditor"
    updated = await probe.wait(svc["id"], "client_updated", count=2)
    assert updated[0]["data"]["changes"] == {"active": [True, False]} and updated[0]["sequence"] == 2
    assert (await client.patch(path, headers=bearer(admin), json={"secret_hash": "x"})).status_code == 422
    assert (await client.patch(path, headers=bearer(admin), json={"roles": ["root"]})).status_code == 422


async def test_a_rotated_secret_replaces_the_old_one(client: httpx.AsyncClient) -> None:
    admin = await admin_token(client)
    svc = await new_client(client, admin, ["agent"])
    rotated = await client.post(f"{CLIENTS}/{svc['client_id']}/rotate-secret", headers=bearer(admin))
    assert rotated.status_code == 200
    assert rotated.headers["cache-control"] == "no-store"
    secret = rotated.json()["client_secret"]
    assert secret != svc["client_secret"] and rotated.json()["version"] == 2
    assert (await grant(client, svc["client_id"], svc["client_secret"])).status_code == 401
    assert (await grant(client, svc["client_id"], secret)).status_code == 200
    listed = (await client.get(CLIENTS, headers=bearer(admin))).json()
    assert all("secret" not in key for c in listed for key in c)


async def test_a_deleted_client_is_gone(client: httpx.AsyncClient, listen: Listen) -> None:
    admin = await admin_token(client)
    probe = await listen("auth.client_deleted")
    svc = await new_client(client, admin, ["agent"])
    path = f"{CLIENTS}/{svc['client_id']}"
    assert (await client.delete(path, headers={**bearer(admin), "If-Match": '"7"'})).status_code == 412
    assert (await client.delete(path, headers=bearer(admin))).status_code == 204
    assert (await grant(client, svc["client_id"], svc["client_secret"])).status_code == 401
    assert (await client.get(path, headers=bearer(admin))).status_code == 404
    assert (await client.delete(path, headers=bearer(admin))).status_code == 404
    assert svc["client_id"] not in {c["client_id"] for c in (await client.get(CLIENTS, headers=bearer(admin))).json()}
    await probe.one(svc["id"], "client_deleted")


async def test_client_administration_is_admin_only(client: httpx.AsyncClient) -> None:
    admin = await admin_token(client)
    svc = await new_client(client, admin, ["admin"])
    # A client holding the admin role may administer (it is an admin); one without may not.
    other = await new_client(client, admin, ["agent"])
    token = (await grant(client, other["client_id"], other["client_secret"])).json()["access_token"]
    path = f"{CLIENTS}/{svc['client_id']}"
    for method, url in [
        ("GET", path),
        ("PATCH", path),
        ("DELETE", path),
        ("POST", f"{path}/rotate-secret"),
    ]:
        response = await client.request(method, url, headers=bearer(token), json={} if method == "PATCH" else None)
        assert response.status_code == 403, (method, url)
    assert (await client.get(f"{CLIENTS}/{'x' * 65}", headers=bearer(admin))).status_code == 422
