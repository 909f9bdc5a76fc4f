"""auth.* events leave through the outbox as CloudEvents on the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
import httpx
from itsm_shared.testing import Listen

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
