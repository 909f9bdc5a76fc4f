"""Problem tests run the real app in-process against a database of their own, built by the real migrations,
and the real RabbitMQ under names of their own. Tokens come from a test issuer the app's verifier trusts."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI
from itsm_shared.testing import (
    TestDatabase,
    TestIssuer,
    create_database,
    drop_database,
    infrastructure,
    migrate,
    remove_topology,
    test_names,
)

CONSUMER_QUEUES = ("problem.incidents",)


@pytest.fixture(scope="session")
def infra() -> Iterator[tuple[str, str]]:
    with infrastructure() as urls:
        yield urls


@pytest.fixture(scope="session")
async def database(infra: tuple[str, str]) -> AsyncIterator[TestDatabase]:
    db = await create_database(infra[0], "itsm_test_problem")
    result = migrate("problem", db.admin_url)
    assert result.returncode == 0, result.stderr
    yield db
    await drop_database(db)


@pytest.fixture(scope="session")
async def names(infra: tuple[str, str]) -> AsyncIterator[dict[str, Any]]:
    names = test_names()
    yield names
    await remove_topology(
        infra[1],
        names["exchange"],
        names["dead_letter_exchange"],
        tuple(names["queue_prefix"] + q for q in CONSUMER_QUEUES),
    )


@pytest.fixture(scope="session")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="session")
def environment(database: TestDatabase, infra: tuple[str, str], names: dict[str, Any]) -> dict[str, str]:
    env = {
        "ITSM_DATABASE_URL": database.app_url("problem"),
        "ITSM_AMQP_URL": infra[1],
        "ITSM_EXCHANGE": names["exchange"],
        "ITSM_DEAD_LETTER_EXCHANGE": names["dead_letter_exchange"],
        "ITSM_QUEUE_PREFIX": names["queue_prefix"],
        "ITSM_OUTBOX_SWEEP_SECONDS": "0.5",
    }
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
async def app(environment: dict[str, str], issuer: TestIssuer) -> AsyncIterator[FastAPI]:
    from problem.config import get_settings

    get_settings.cache_clear()
    from problem.main import app as service_app

    async with service_app.router.lifespan_context(service_app):
        service_app.state.verifier = issuer.verifier()
        await asyncio.wait_for(service_app.state.runtime.broker_started.wait(), timeout=30)
        yield service_app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://problem.test") as c:
        yield c


@pytest.fixture(scope="session")
async def amqp(infra: tuple[str, str]) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    conn = await aio_pika.connect_robust(infra[1])
    yield conn
    await conn.close()


@dataclass
class Actor:
    """A user of a given role, with the headers to act as them."""

    id: uuid.UUID
    headers: dict[str, str]


@pytest.fixture
def actor(issuer: TestIssuer) -> Any:
    def make(*roles: str) -> Actor:
        subject = uuid.uuid4()
        return Actor(subject, {"Authorization": f"Bearer {issuer.token(*roles, subject=subject)}"})

    return make


@pytest.fixture
def agent(actor: Any) -> Actor:
    return actor("agent")  # type: ignore[no-any-return]


@pytest.fixture
def admin(actor: Any) -> Actor:
    return actor("admin")  # type: ignore[no-any-return]


async def create(client: httpx.AsyncClient, who: Actor, **fields: Any) -> dict[str, Any]:
    body = {"title": "Mail server crashes nightly", "impact": 2, "urgency": 2, **fields}
    response = await client.post("/api/v1/problems", headers=who.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.fixture
def manager(actor: Any) -> Actor:
    return actor("problem_manager")  # type: ignore[no-any-return]


async def publish_incident_event(
    amqp: aio_pika.abc.AbstractRobustConnection,
    names: dict[str, Any],
    action: str,
    incident: dict[str, Any],
    sequence: int,
    event_id: str | None = None,
) -> str:
    """An `incident.*` event as the incident service publishes it (CloudEvents, structured JSON)."""
    import json

    from itsm_shared.events import new_event

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
