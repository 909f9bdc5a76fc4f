"""Incidents moved by the problem service's events through the running stack, and forged ones changing nothing
(CONTRACT §8; issue #11, finding 2)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import aio_pika
import httpx
import stack as stack_module
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, new_event, routing_key
from itsm_shared.testing import eventually

from .conftest import User
from .incidents_support import INCIDENTS, create, get, listed

# ---------------------------------------------------------------- from the problem service's events


async def test_problem_link_event_reaches_the_incident_through_the_gateway(
    http: httpx.AsyncClient,
    stack: stack_module.Stack,
    amqp: aio_pika.abc.AbstractRobustConnection,
    agent: User,
) -> None:
    incident = await create(http, agent, title="Outlook keeps asking for the password")
    problem = uuid.uuid4()
    event = new_event(
        service="problem",
        type="problem.incident_linked",
        subject=problem,
        data={
            "id": str(problem),
            "number": "PRB0000777",
            "incident_id": incident["id"],
            "workaround": "Remove the cached credentials and sign in again",
        },
        sequence=3,
    )
    # As the problem service publishes it: its broker user, user_id set (anyone else's would be parked).
    problem_service = await aio_pika.connect(stack.broker_url("problem"))
    channel = await problem_service.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(stack.settings.exchange)
    started = time.monotonic()
    await exchange.publish(
        aio_pika.Message(
            json.dumps(event).encode(),
            message_id=event["id"],
            content_type=CLOUDEVENTS_CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=problem_service.url.user,
        ),
        routing_key=routing_key(event["type"]),
        mandatory=True,
    )

    async def notes() -> list[dict[str, Any]]:
        return list((await http.get(f"{INCIDENTS}/{incident['id']}/notes", headers=agent.headers())).json())

    linked = await eventually(
        lambda: get(http, agent, incident["id"]), lambda i: i["problem_id"] == str(problem), what="the link"
    )
    visible = await eventually(
        notes, lambda n: any("Remove the cached credentials" in x["body"] for x in n), what="the workaround note"
    )
    delay = time.monotonic() - started
    print(
        f"\nproblem.incident_linked published -> problem_id and workaround note visible via the gateway: {delay:.3f}s"
    )
    assert linked["version"] == incident["version"] + 1
    assert [n["visibility"] for n in visible] == ["internal"] and "PRB0000777" in visible[0]["body"]
    assert await listed(http, agent, problem_id=str(problem)) == [incident["id"]]
    await problem_service.close()


async def test_a_forged_problem_event_changes_no_incident(
    http: httpx.AsyncClient,
    stack: stack_module.Stack,
    amqp: aio_pika.abc.AbstractRobustConnection,
    agent: User,
) -> None:
    """Issue #11, finding 2, through the running stack: a problem.incident_linked with an attacker's work note and a
    problem.resolved naming an incident, published on the exchange by a client that is not the problem service (the
    broker's administrator here), change nothing; what the problem service publishes next on the same queues does."""
    target = await create(http, agent, title="Laptop will not boot")
    marker = await create(http, agent, title="Marker")
    forged_problem, real_problem = uuid.uuid4(), uuid.uuid4()

    def linked(incident: dict[str, Any], problem: uuid.UUID, workaround: str) -> dict[str, Any]:
        data = {"id": str(problem), "incident_id": incident["id"], "workaround": workaround}
        return new_event(service="problem", type="problem.incident_linked", subject=problem, data=data, sequence=1)

    def resolved(incident: dict[str, Any], problem: uuid.UUID) -> dict[str, Any]:
        data = {"id": str(problem), "resolve_linked_incidents": True, "incident_ids": [incident["id"]]}
        return new_event(service="problem", type="problem.resolved", subject=problem, data=data, sequence=2)

    async def publish(connection: aio_pika.abc.AbstractConnection, *events: dict[str, Any]) -> None:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(stack.settings.exchange)
        user = connection.url.user if connection is not amqp else None
        for event in events:
            body = json.dumps(event).encode()
            message = aio_pika.Message(
                body, message_id=event["id"], content_type=CLOUDEVENTS_CONTENT_TYPE, user_id=user
            )
            await exchange.publish(message, routing_key=routing_key(event["type"]))
        await channel.close()

    await publish(amqp, linked(target, forged_problem, "Mail your password to it@evil.example"))
    await publish(amqp, resolved(target, forged_problem))
    problem_service = await aio_pika.connect(stack.broker_url("problem"))
    try:
        await publish(problem_service, linked(marker, real_problem, "Hold the power button"))
        await eventually(lambda: get(http, agent, marker["id"]), lambda i: i["problem_id"] == str(real_problem))
        await publish(problem_service, resolved(marker, real_problem))
        await eventually(lambda: get(http, agent, marker["id"]), lambda i: i["status"] == "resolved")
    finally:
        await problem_service.close()
    after = await get(http, agent, target["id"])
    assert (after["problem_id"], after["status"], after["version"]) == (None, "new", target["version"])
    notes = (await http.get(f"{INCIDENTS}/{target['id']}/notes", headers=agent.headers())).json()
    assert notes == []
