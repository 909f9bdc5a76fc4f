"""Problem tests: the shared fixtures (the `itsm` pytest plugin, itsm_shared.testing_fixtures) set for the
problem service."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aio_pika
import httpx
import pytest
from itsm_shared.events import new_event
from itsm_shared.testing_fixtures import Actor


@pytest.fixture(scope="session")
def service_name() -> str:
    return "problem"


@pytest.fixture(scope="session")
def consumer_queues() -> tuple[str, ...]:
    return ("problem.incidents",)


async def create(client: httpx.AsyncClient, who: Actor, **fields: Any) -> dict[str, Any]:
    body = {"title": "Mail server crashes nightly", "impact": 2, "urgency": 2, **fields}
    response = await client.post("/api/v1/problems", headers=who.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.fixture
def manager(actor: Any) -> Actor:
    return actor("problem_manager")  # type: ignore[no-any-return]


@pytest.fixture
async def as_incident(app: Any, amqp_as: Any) -> aio_pika.abc.AbstractRobustConnection:
    """A connection as the incident service's broker user: what it publishes, the incident service published."""
    connection: aio_pika.abc.AbstractRobustConnection = await amqp_as("incident")
    return connection


async def publish_incident_event(
    amqp: aio_pika.abc.AbstractRobustConnection,
    names: dict[str, Any],
    action: str,
    incident: dict[str, Any],
    sequence: int,
    event_id: str | None = None,
) -> str:
    """An `incident.*` event as the incident service publishes it (CloudEvents, structured JSON, `user_id` the
    broker user of `amqp`: the `as_incident` fixture's)."""
    event = new_event(
        service="incident", type=f"incident.{action}", subject=incident["id"], data=incident, sequence=sequence
    )
    if event_id:
        event["id"] = event_id
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
        routing_key=f"incident.{action}",
    )
    await channel.close()
    return str(event["id"])


def incident_data(**fields: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "number": "INC0000042",
        "title": "Printer jam",
        "status": "new",
        "priority": 3,
        "category": "hardware",
        "configuration_item": "printer-7",
        "caller_id": str(uuid.uuid4()),
        **fields,
    }
