"""auth.* events leave through the outbox as CloudEvents on the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aio_pika
import httpx
from itsm_shared.testing import parse_cloudevent

from .conftest import admin_token, bearer, login

PASSWORD = "a long enough password"


async def collect(
    queue: aio_pika.abc.AbstractQueue, want: int, timeout: float = 10
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < want and asyncio.get_running_loop().time() < deadline:
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        await message.ack()
        got.append(message)
    return got


async def test_user_and_login_events_are_published_as_cloudevents(
    client: httpx.AsyncClient, amqp: aio_pika.abc.AbstractRobustConnection, names: dict[str, Any]
) -> None:
    token = await admin_token(client)  # the app is up and its topology declared
    channel = await amqp.channel()
    exchange = await channel.get_exchange(names["exchange"])
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, "auth.#")
    username = f"ev{uuid.uuid4().hex[:8]}"
    created = await client.post(
        "/api/v1/auth/users", headers=bearer(token), json={"username": username, "password": "a long enough password"}
    )
    assert created.status_code == 201
    await login(client, username, "wrong password here")
    await login(client, username, "a long enough password")
    # Other auth events (the bootstrap admin's, the admin's logins) share the exchange: keep this user's.
    messages = [m for m in await collect(queue, 6, timeout=5) if json.loads(m.body)["data"].get("username") == username]
    events = [parse_cloudevent(m.body) for m in messages]
    types = [e["type"] for e in events]
    assert types == ["itsm.auth.user_created", "itsm.auth.login_failed", "itsm.auth.login_succeeded"]
    first, message = events[0], messages[0]
    assert first["source"] == "/itsm/auth" and first["subject"] == created.json()["id"]
    assert first["specversion"] == "1.0" and first["datacontenttype"] == "application/json"
    assert first["actorid"] and first["correlationid"] and first["sequence"] == 1
    assert message.message_id == first["id"] and message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/cloudevents+json" and message.routing_key == "auth.user_created"
    data = json.loads(message.body)["data"]
    assert data["username"] == username and "password_hash" not in data and "password" not in data
    await channel.close()


async def test_a_failed_change_publishes_nothing(
    client: httpx.AsyncClient, amqp: aio_pika.abc.AbstractRobustConnection, names: dict[str, Any]
) -> None:
    token = await admin_token(client)
    channel = await amqp.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(await channel.get_exchange(names["exchange"]), "auth.user_created")
    taken = await client.post(
        "/api/v1/auth/users", headers=bearer(token), json={"username": "admin", "password": "a long enough password"}
    )
    assert taken.status_code == 409
    assert await collect(queue, 1, timeout=2) == []
    await channel.close()


async def test_refused_logins_and_token_reuse_keep_their_events(
    client: httpx.AsyncClient, amqp: aio_pika.abc.AbstractRobustConnection, names: dict[str, Any]
) -> None:
    """The request is refused, yet what it recorded stands: the lock, the revoked family and their events."""
    token = await admin_token(client)
    channel = await amqp.channel()
    queue = await channel.declare_queue(exclusive=True)
    exchange = await channel.get_exchange(names["exchange"])
    for key in ("auth.account_locked", "auth.token_revoked"):
        await queue.bind(exchange, key)
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
    events = [parse_cloudevent(m.body) for m in await collect(queue, 2, timeout=5)]
    mine = {e["type"]: e["data"] for e in events if e["data"].get("user_id") == user_id}
    assert mine["itsm.auth.token_revoked"]["reason"] == "refresh_token_reuse"
    assert mine["itsm.auth.token_revoked"]["revoked"] == 2  # the spent token and its successor
    assert mine["itsm.auth.account_locked"]["username"] == username
    await channel.close()
