"""Incident tests: the shared fixtures (the `itsm` pytest plugin, itsm_shared.testing_fixtures) set for the
incident service, a probe on its events, and the problem service's events published as its broker user."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aio_pika
import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from itsm_shared.db import asyncpg_dsn
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, new_event, routing_key
from itsm_shared.testing import EventProbe, Listen
from itsm_shared.testing_fixtures import Actor

if TYPE_CHECKING:  # imported by name, pytest would try to collect it
    from itsm_shared.testing import TestDatabase


@pytest.fixture(scope="session")
def service_name() -> str:
    return "incident"


@pytest.fixture(scope="session")
def consumer_queues() -> tuple[str, ...]:
    return ("incident.problem-linked", "incident.problem-unlinked", "incident.problem-resolved")


@pytest.fixture(scope="session")
def extra_env() -> dict[str, str]:
    return {"ITSM_SLA_TICK_SECONDS": "0.1"}


@pytest.fixture
async def probe(listen: Listen) -> EventProbe:
    """Everything the incident service publishes (incident.*); short types mean incident.*."""
    return await listen("incident.#")


async def create(client: httpx.AsyncClient, who: Actor, **fields: Any) -> dict[str, Any]:
    body = {"title": "Mail is down", "impact": 2, "urgency": 2, **fields}
    response = await client.post("/api/v1/incidents", headers=who.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


# ---------------------------------------------------------------- the problem service's events

LINKED, UNLINKED, RESOLVED = "problem.incident_linked", "problem.incident_unlinked", "problem.resolved"
AmqpAs = Callable[[str], Awaitable[aio_pika.abc.AbstractRobustConnection]]


class Problems:
    """Publishes as the problem service does, onto the test session's exchange, as its broker user."""

    def __init__(self, exchange: aio_pika.abc.AbstractExchange, user_id: str | None) -> None:
        self.exchange = exchange
        self.user_id = user_id
        self.numbers = iter(range(1, 10**6))

    def event(
        self,
        type_: str,
        problem_id: uuid.UUID,
        *,
        sequence: int,
        number: str | None = None,
        **data: Any,
    ) -> dict[str, Any]:
        body = {"id": str(problem_id), "number": number or f"PRB{next(self.numbers):07d}", **data}
        event = new_event(service="problem", type=type_, subject=problem_id, data=body, sequence=sequence)
        return event

    def link(
        self,
        problem_id: uuid.UUID,
        incident_id: str | uuid.UUID,
        *,
        sequence: int,
        linked: bool = True,
        workaround: str | None = None,
        number: str | None = None,
    ) -> dict[str, Any]:
        return self.event(
            LINKED if linked else UNLINKED,
            problem_id,
            sequence=sequence,
            number=number,
            incident_id=str(incident_id),
            workaround=workaround,
            status="root_cause_analysis",
            known_error=workaround is not None,
        )

    async def publish(self, event: dict[str, Any]) -> None:
        await self.publish_raw(json.dumps(event).encode(), routing_key(event["type"]), event["id"])

    async def publish_raw(self, body: bytes, key: str, message_id: str) -> None:
        await self.exchange.publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                content_type=CLOUDEVENTS_CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                user_id=self.user_id,
            ),
            routing_key=key,
            mandatory=True,
        )


@pytest.fixture
async def channel(
    app: FastAPI, amqp: aio_pika.abc.AbstractRobustConnection
) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A confirming channel, opened once the app has declared its topology and started its consumers."""
    ch = await amqp.channel(publisher_confirms=True)
    yield ch
    await ch.close()


@pytest.fixture
async def problems(app: FastAPI, amqp_as: AmqpAs, names: dict[str, Any]) -> AsyncIterator[Problems]:
    """The problem service's publisher: a confirming channel as its broker user."""
    connection = await amqp_as("problem")
    channel = await connection.channel(publisher_confirms=True)
    yield Problems(await channel.get_exchange(names["exchange"]), connection.url.user)
    await channel.close()


@pytest.fixture
async def db(database: TestDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database.admin_url))
    yield conn
    await conn.close()
