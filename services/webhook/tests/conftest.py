"""Webhook tests: the shared fixtures (the `itsm` pytest plugin, itsm_shared.testing_fixtures) set for the webhook
service, a receiver on this machine, and events published onto the session's exchange."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI
from itsm_shared.db import transaction
from itsm_shared.events import new_event
from itsm_shared.testing_fixtures import Actor
from webhook import fanout

from .receiver import Receiver

# Short enough for tests; the real schedule is the default (config.RETRY_SCHEDULE).
RETRY_SCHEDULE = "0,0.3,0.3"


@pytest.fixture(scope="session")
def service_name() -> str:
    return "webhook"


@pytest.fixture(scope="session")
def consumer_queues() -> tuple[str, ...]:
    return ("webhook.events",)


@pytest.fixture(scope="session")
def extra_env() -> dict[str, str]:
    return {
        "ITSM_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        "ITSM_WEBHOOK_SECRET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "ITSM_WEBHOOK_RETRY_SCHEDULE": RETRY_SCHEDULE,
        "ITSM_WEBHOOK_POLL_SECONDS": "0.1",
        "ITSM_WEBHOOK_TIMEOUT_SECONDS": "1",
        "ITSM_WEBHOOK_CLAIM_SECONDS": "3",
    }


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def integrator(actor: Callable[..., Actor]) -> Actor:
    return actor("integrator")


@pytest.fixture
def path() -> str:
    """A path of the receiver of this test's own."""
    return f"/hook/{uuid.uuid4().hex[:12]}"


async def subscribe(client: httpx.AsyncClient, who: Actor, url: str, **fields: Any) -> dict[str, Any]:
    body = {"url": url, "event_types": ["itsm.incident.*"], **fields}
    response = await client.post("/api/v1/webhooks", headers=who.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def publish(
    amqp_as: Callable[[str], Awaitable[aio_pika.abc.AbstractRobustConnection]],
    names: dict[str, Any],
    event_type: str = "incident.created",
    subject: str | None = None,
    data: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An event as a producer publishes it (CloudEvents, structured JSON, as its broker user: `amqp_as`, the
    plugin's fixture); returns it."""
    event = new_event(
        service=event_type.split(".")[0],
        type=event_type,
        subject=subject or str(uuid.uuid4()),
        data=data or {"title": "Printer jam"},
        sequence=1,
    )
    if event_id:
        event["id"] = event_id
    amqp = await amqp_as(event_type.split(".")[0])
    channel = await amqp.channel()
    exchange = await channel.get_exchange(names["exchange"])
    await exchange.publish(
        aio_pika.Message(
            json.dumps(event).encode(),
            message_id=event["id"],
            content_type="application/cloudevents+json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=amqp.url.user,
        ),
        routing_key=event_type,
    )
    await channel.close()
    return event


def event_of(event_type: str = "itsm.incident.created", subject: str | None = None, **data: Any) -> dict[str, Any]:
    return new_event(
        service=event_type.split(".")[1],
        type=event_type,
        subject=subject or str(uuid.uuid4()),
        data=data or {"title": "Printer jam"},
        sequence=1,
    )


async def inject(app: FastAPI, *events: dict[str, Any]) -> list[bytes]:
    """Events handed to the consumer's handler as a batch of the broker would be (`fanout.on_events`, one
    transaction of the seam); returns each event's bytes, the body its deliveries carry."""
    bodies = [json.dumps(e).encode() for e in events]
    async with transaction(app.state.sessions) as session:
        await fanout.on_events(session, [fanout.parse(body) for body in bodies])
    return bodies


async def log_of(client: httpx.AsyncClient, who: Actor, subscription_id: str, **query: str) -> list[dict[str, Any]]:
    response = await client.get(
        f"/api/v1/webhooks/{subscription_id}/deliveries", headers=who.headers, params={"limit": "200", **query}
    )
    assert response.status_code == 200, response.text
    return list(response.json()["items"])
