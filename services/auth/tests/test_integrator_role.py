"""The `integrator` role (issue #12): users and service clients can be given it, and their tokens carry it."""

from __future__ import annotations

import uuid

import httpx

from .conftest import admin_token, bearer, login


async def test_users_and_clients_can_be_integrators(client: httpx.AsyncClient) -> None:
    admin = bearer(await admin_token(client))
    username = f"int{uuid.uuid4().hex[:8]}"
    password = "an integrator's password"
    user = await client.post(
        "/api/v1/auth/users", headers=admin, json={"username": username, "password": password, "roles": ["integrator"]}
    )
    assert user.status_code == 201, user.text
    assert user.json()["roles"] == ["integrator"]
    response = await login(client, username, password)
    assert response.status_code == 200, response.text
    me = await client.get("/api/v1/auth/me", headers=bearer(response.json()["access_token"]))
    assert me.json()["roles"] == ["integrator"]

    made = await client.post("/api/v1/auth/clients", headers=admin, json={"name": "chatops", "roles": ["integrator"]})
    assert made.status_code == 201, made.text
    grant = await client.post(
        "/api/v1/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": made.json()["client_id"],
            "client_secret": made.json()["client_secret"],
        },
    )
    assert grant.status_code == 200 and grant.json()["scope"] == "integrator"
    unknown = await client.post("/api/v1/auth/clients", headers=admin, json={"name": "x", "roles": ["integrators"]})
    assert unknown.status_code == 422
