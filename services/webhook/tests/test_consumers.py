"""The consumer of `webhook.events` (every event, through the broker, in batches with the inbox), what it stores,
the pruning of the retention window, and the settings and key the service starts with."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI
from itsm_shared.db import transaction
from itsm_shared.testing import eventually
from itsm_shared.testing_fixtures import Actor
from sqlalchemy import text
from webhook import housekeeping, signing
from webhook.config import RETRY_SCHEDULE, WebhookSettings

from .conftest import event_of, inject, log_of, publish, subscribe
from .receiver import Receiver


async def rows(app: FastAPI, sql: str, **params: Any) -> list[Any]:
    async with app.state.sessions() as session:
        return list((await session.execute(text(sql), params)).all())


async def test_a_published_event_is_stored_and_delivered_once(
    client: httpx.AsyncClient,
    app: FastAPI,
    integrator: Actor,
    receiver: Receiver,
    path: str,
    amqp_as: Callable[[str], Awaitable[aio_pika.abc.AbstractRobustConnection]],
    names: dict[str, Any],
) -> None:
    subject = str(uuid.uuid4())
    created = await subscribe(client, integrator, receiver.url(path), subjects=[subject])
    event = await publish(amqp_as, names, "incident.created", subject=subject)
    await publish(amqp_as, names, "incident.created", subject=subject, event_id=event["id"])  # a redelivery
    [request] = await eventually(lambda: asyncio.sleep(0, receiver.received(path)), what="the delivery")
    assert request.body == json.dumps(event).encode()
    await asyncio.sleep(0.5)  # time for a duplicate to show
    assert len(receiver.received(path)) == 1 and len(await log_of(client, integrator, created["id"])) == 1
    [(body, kind)] = await rows(app, "SELECT body, type FROM stored_event WHERE id = :id", id=event["id"])
    assert bytes(body) == request.body and kind == "itsm.incident.created"


async def test_what_is_not_an_event_is_parked(
    app: FastAPI, amqp: aio_pika.abc.AbstractRobustConnection, names: dict[str, Any]
) -> None:
    channel = await amqp.channel()
    dlq = await channel.declare_queue(f"{names['queue_prefix']}webhook.events.dlq", passive=True)
    exchange = await channel.get_exchange(names["exchange"])
    marker = uuid.uuid4().hex.encode()
    await exchange.publish(aio_pika.Message(b"not json " + marker), routing_key="incident.created")

    async def parked() -> aio_pika.abc.AbstractIncomingMessage | None:
        while (message := await dlq.get(fail=False, no_ack=True)) is not None:
            if marker in message.body:
                return message
        return None

    message = await eventually(parked, what="the parked message")
    assert "not a valid event" in str(message.headers["x-itsm-error"])
    await channel.close()


async def test_pruning_keeps_the_retention_window_and_pending_deliveries(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor
) -> None:
    subject = str(uuid.uuid4())
    created = await subscribe(client, integrator, "http://127.0.0.1:9/never", subjects=[subject], active=False)
    old, waiting, recent = (event_of("itsm.incident.updated", subject) for _ in range(3))
    await inject(app, old, waiting, recent)
    async with transaction(app.state.sessions) as session:
        await session.execute(
            text("UPDATE stored_event SET received_at = now() - interval '8 days' WHERE id = ANY(:ids)"),
            {"ids": [uuid.UUID(old["id"]), uuid.UUID(waiting["id"])]},
        )
        for event, status in ((old, "succeeded"), (waiting, "pending")):
            await session.execute(
                text(
                    "INSERT INTO delivery (id, subscription_id, event_id, event_type, status, next_attempt_at) "
                    "VALUES (:id, :s, :e, 'itsm.incident.updated', :status, now() + interval '1 day')"
                ),
                {"id": uuid.uuid4(), "s": created["id"], "e": event["id"], "status": status},
            )
        await session.execute(
            text(
                "UPDATE subscription SET previous_secret = secret, previous_secret_expires_at = now() - interval '1 s' "
                "WHERE id = :s"
            ),
            {"s": created["id"]},
        )
    async with transaction(app.state.sessions) as session:
        await housekeeping.prune(session, housekeeping.timedelta(days=7))
    kept = await rows(
        app,
        "SELECT id FROM stored_event WHERE id = ANY(:ids)",
        ids=[uuid.UUID(e["id"]) for e in (old, waiting, recent)],
    )
    assert {str(r[0]) for r in kept} == {waiting["id"], recent["id"]}
    assert [d["event_id"] for d in await log_of(client, integrator, created["id"])] == [waiting["id"]]
    [(previous,)] = await rows(app, "SELECT previous_secret FROM subscription WHERE id = :s", s=created["id"])
    assert previous is None


def test_the_retry_schedule_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ITSM_WEBHOOK_RETRY_SCHEDULE", raising=False)
    assert WebhookSettings().webhook_retry_schedule == RETRY_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    for given in ("0,1,2.5", "[0, 1, 2.5]"):
        monkeypatch.setenv("ITSM_WEBHOOK_RETRY_SCHEDULE", given)
        assert WebhookSettings().webhook_retry_schedule == (0, 1, 2.5)
    for bad in ("", "1,-1", "soon"):
        monkeypatch.setenv("ITSM_WEBHOOK_RETRY_SCHEDULE", bad)
        with pytest.raises(ValueError, match=r"webhook_retry_schedule|ITSM_WEBHOOK_RETRY_SCHEDULE"):
            WebhookSettings()


def test_the_secret_key(tmp_path: Path) -> None:
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    for settings in (
        WebhookSettings(webhook_secret_key=None, webhook_secret_key_file=None),
        WebhookSettings(webhook_secret_key="c2hvcnQ=", webhook_secret_key_file=None),
    ):
        with pytest.raises(signing.SecretKeyError, match="ITSM_WEBHOOK_SECRET_KEY"):
            signing.load_box(settings)
    (tmp_path / "key").write_text(key + "\n")
    box = signing.load_box(WebhookSettings(webhook_secret_key=None, webhook_secret_key_file=tmp_path / "key"))
    assert box == signing.load_box(WebhookSettings(webhook_secret_key=key, webhook_secret_key_file=None))
    subscription = uuid.uuid4()
    sealed = box.seal(subscription, "whsec_abc")
    assert box.open(subscription, sealed) == "whsec_abc"
    with pytest.raises(signing.SecretKeyError, match="altered"):
        box.open(uuid.uuid4(), sealed)  # moved to another row
    other = signing.SecretBox(os.urandom(32))
    with pytest.raises(signing.SecretKeyError, match="not the key given"):
        other.open(subscription, sealed)
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(signing.secret_bytes(secret)) == 32
