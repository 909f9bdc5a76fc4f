"""auth.* events leave through the outbox as CloudEvents on the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aio_pika
import httpx
import jwt
from itsm_shared.testing import EventProbe, Listen
from itsm_shared.testing_events import contract_problems

from .conftest import admin_token, bearer, login

PASSWORD = "a long enough password"


async def test_user_and_login_events_are_published_as_cloudevents(client: httpx.AsyncClient, listen: Listen) -> None:
    token = await admin_token(client)
    probe = await listen("auth.#")
    username = f"ev{uuid.uuid4().hex[:8]}"
    created = await client.post(
        "/api/v1/auth/users", headers=bearer(token), json={"username": username, "password": "a long enough password"}
    )
    assert created.status_code == 201
    await login(client, username, "wrong password here")
    await login(client, username, "a long enough password")
    # Other auth events (the bootstrap admin's, the admin's logins) share the exchange: keep this user's.
    events = await probe.wait(count=3, where=lambda e: e["data"].get("username") == username)
    types = [e["type"] for e in events]
    assert types == ["itsm.auth.user_created", "itsm.auth.login_failed", "itsm.auth.login_succeeded"]
    first = events[0]
    message = probe.message_of(first)
    assert first["source"] == "/itsm/auth" and first["subject"] == created.json()["id"]
    assert first["specversion"] == "1.0" and first["datacontenttype"] == "application/json"
    assert first["actorid"] and first["correlationid"] and first["sequence"] == 1
    assert message.message_id == first["id"] and message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/cloudevents+json" and message.routing_key == "auth.user_created"
    data = json.loads(message.body)["data"]
    assert data["username"] == username and "password_hash" not in data and "password" not in data


async def test_a_failed_change_publishes_nothing(client: httpx.AsyncClient, listen: Listen) -> None:
    token = await admin_token(client)
    probe = await listen("auth.user_created")
    taken = await client.post(
        "/api/v1/auth/users", headers=bearer(token), json={"username": "admin", "password": "a long enough password"}
    )
    assert taken.status_code == 409
    await asyncio.sleep(2)  # room for an event to show up
    assert probe.messages == []


async def test_refused_logins_and_token_reuse_keep_their_events(client: httpx.AsyncClient, listen: Listen) -> None:
    """The request is refused, yet what it recorded stands: the lock, the revoked family and their events."""
    token = await admin_token(client)
    probe = await listen("auth.account_locked", "auth.token_revoked")
    username = f"ev{uuid.uuid4().hex[:8]}"
    created = await client.post(
        "/api/v1/auth/users", headers=bearer(token), json={"username": username, "password": PASSWORD}
    )
    user_id = created.json()["id"]
    first = (await login(client, username, PASSWORD)).json()["refresh_token"]
    grant = {"grant_type": "refresh_token"}
    assert (await client.post("/api/v1/auth/token", data={**grant, "refresh_token": first})).status_code == 200
    assert (await client.post("/api/v1/auth/token", data={**grant, "refresh_token": first})).status_code == 400
    for _ in range(5):
        assert (await login(client, username, "wrong password here")).status_code == 400
    events = await probe.wait(count=2, where=lambda e: e["data"].get("user_id") == user_id)
    mine = {e["type"]: e["data"] for e in events}
    assert mine["itsm.auth.token_revoked"]["reason"] == "refresh_token_reuse"
    assert mine["itsm.auth.token_revoked"]["revoked"] == 2  # the spent token and its successor
    assert mine["itsm.auth.account_locked"]["username"] == username


async def test_every_auth_event_type_carries_every_attribute_of_the_contract(
    client: httpx.AsyncClient, listen: Listen
) -> None:
    """Issue #12, point 6: login, lock, unlock and revocation events had no `sequence`. Each type auth publishes (its
    AsyncAPI document lists them) is driven once here and checked for every attribute of CONTRACT §8."""
    document = (await client.get("/asyncapi.json")).json()
    published = {n for n, c in document["channels"].items() if c["address"] == n.removeprefix("itsm.")}
    assert len(published) >= 12, published
    probe = await listen("auth.#")
    admin = bearer(await admin_token(client))
    username, address = f"ev{uuid.uuid4().hex[:8]}", f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    user = (
        await client.post("/api/v1/auth/users", headers=admin, json={"username": username, "password": PASSWORD})
    ).json()
    updated = await client.patch(f"/api/v1/auth/users/{user['id']}", headers=admin, json={"full_name": "Ev"})
    assert updated.status_code == 200
    tokens = (await login(client, username, PASSWORD)).json()
    assert (await client.post("/api/v1/auth/revoke", data={"token": tokens["refresh_token"]})).status_code == 200
    for _ in range(5):
        assert (await login(client, username, "wrong password here", address=address)).status_code == 400
    unknown = f"nobody{uuid.uuid4().hex[:8]}"
    assert (await login(client, unknown, "wrong password here", address=address)).status_code == 400
    assert (await client.post(f"/api/v1/auth/users/{user['id']}/unlock", headers=admin)).status_code == 200
    svc = (await client.post("/api/v1/auth/clients", headers=admin, json={"name": "events"})).json()
    path = f"/api/v1/auth/clients/{svc['client_id']}"
    assert (await client.patch(path, headers=admin, json={"roles": ["agent"]})).status_code == 200
    assert (await client.post(f"{path}/rotate-secret", headers=admin)).status_code == 200
    assert (await client.delete(path, headers=admin)).status_code == 204
    old_kid = jwt.get_unverified_header(admin["Authorization"].removeprefix("Bearer "))["kid"]
    assert (await client.post("/api/v1/auth/keys/rotate", headers=admin)).status_code == 201
    admin = bearer(await admin_token(client))  # signed by the new key
    assert (await client.post(f"/api/v1/auth/keys/{old_kid}/revoke", headers=admin)).status_code == 200

    subjects = {user["id"], svc["id"], old_kid}

    def nameless(event: dict[str, Any]) -> bool:
        data = event["data"]
        return (
            event["type"] == "itsm.auth.login_failed" and data["username"] is None and data["client_address"] == address
        )

    def complete(p: EventProbe) -> list[dict[str, Any]]:
        found = p.of(where=lambda e: e.get("subject") in subjects or nameless(e))
        return found if {e["type"] for e in found} >= published and any(map(nameless, found)) else []

    mine = await probe.until(complete, timeout=15, what="one event of each type")
    assert {e["type"] for e in mine} >= published
    problems = {
        (e["type"], e.get("subject")): contract_problems(e, source="/itsm/auth")
        for e in mine
        if contract_problems(e, source="/itsm/auth")
    }
    assert problems == {}
    for event in mine:
        message = probe.message_of(event)
        assert message.message_id == event["id"] and message.routing_key == event["type"].removeprefix("itsm.")
    by_type = {e["type"]: e for e in mine if not nameless(e)}
    # A user's events carry the user's version; those that change nothing of the user repeat it.
    assert by_type["itsm.auth.user_updated"]["sequence"] == 2
    for kind in ("login_succeeded", "token_revoked", "login_failed", "account_locked", "user_unlocked"):
        assert by_type[f"itsm.auth.{kind}"]["sequence"] == 2, kind
    assert by_type["itsm.auth.client_deleted"]["sequence"] == 4 and by_type["itsm.auth.key_revoked"]["sequence"] == 1
    # A name that is no account: its keyed hash is the subject, at version 0.
    nobody = next(filter(nameless, mine))
    assert nobody["subject"] == nobody["data"]["username_hmac"] and nobody["sequence"] == 0
