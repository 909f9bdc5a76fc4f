"""The incident read model in batches (links.on_incident_events, consumed through itsm_shared.batches): a batch
has the effect of its events applied one by one in arrival order, whatever it holds; new incidents of one
batch are linked to matching known errors together; a bad event is parked alone."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import Any

import aio_pika
import httpx
from fastapi import FastAPI
from itsm_shared.batches import Applied, Rejected
from itsm_shared.db import transaction
from itsm_shared.events import CloudEvent, new_event
from itsm_shared.testing import Listen, eventually
from problem import links
from prometheus_client import REGISTRY
from sqlalchemy import text

from .conftest import Actor, create, incident_data

Event = CloudEvent[dict[str, Any]]
COLUMNS = "number, title, status, priority, category, configuration_item, caller_id, deleted, sequence"


def incident_event(action: str, incident: dict[str, Any], sequence: int) -> Event:
    return Event.model_validate(
        new_event(
            service="incident", type=f"incident.{action}", subject=incident["id"], data=incident, sequence=sequence
        )
    )


async def apply(app: FastAPI, events: Sequence[Event]) -> list[object]:
    async with transaction(app.state.sessions) as session:
        return await links.on_incident_events(session, events)


async def read_model(app: FastAPI, incident_id: str) -> tuple[Any, ...] | None:
    async with app.state.sessions() as session:
        row = (
            await session.execute(text(f"SELECT {COLUMNS} FROM incident_ref WHERE id = :i"), {"i": incident_id})
        ).first()
    return tuple(row) if row is not None else None


def story(incident: dict[str, Any]) -> list[Event]:
    """Out of order, with a delete in the middle and an update older than what is applied."""
    return [
        incident_event("updated", {**incident, "title": "third", "status": "in_progress"}, 3),
        incident_event("created", {**incident, "title": "first"}, 1),
        incident_event("deleted", {**incident, "title": "deleted"}, 2),
        incident_event("updated", {**incident, "title": "second"}, 2),
        incident_event("updated", {**incident, "title": "fourth", "status": "on_hold"}, 4),
        incident_event("note_added", {"id": str(uuid.uuid4()), "incident_id": incident["id"]}, 5),
    ]


async def test_a_batch_has_the_effect_of_its_events_one_by_one(app: FastAPI) -> None:
    batched, single = incident_data(), incident_data()
    single = {**batched, "id": single["id"]}
    outcomes = await apply(app, story(batched))
    assert all(isinstance(o, Applied) for o in outcomes)
    for event in story(single):
        await apply(app, [event])
    got = await read_model(app, batched["id"])
    assert got is not None
    assert got == await read_model(app, single["id"])
    assert got[1:3] == ("fourth", "on_hold")
    assert got[-2:] == (True, 4)  # deleted sticks once set; the highest sequence
    # A later batch older than what is stored changes nothing; a delete, whatever its sequence, is kept.
    await apply(app, [incident_event("updated", {**batched, "title": "stale"}, 3)])
    assert await read_model(app, batched["id"]) == got


async def test_a_bad_incident_event_is_rejected_alone(app: FastAPI) -> None:
    good, bad = incident_data(), incident_data(priority="high")
    odd_caller = incident_data(caller_id="not-a-uuid")
    outcomes = await apply(
        app,
        [
            incident_event("created", bad, 1),
            incident_event("created", good, 1),
            incident_event("created", odd_caller, 1),
        ],
    )
    assert isinstance(outcomes[0], Rejected) and "priority" in outcomes[0].reason
    assert isinstance(outcomes[1], Applied)
    assert isinstance(outcomes[2], Rejected)
    assert await read_model(app, good["id"]) is not None
    assert await read_model(app, bad["id"]) is None


async def test_new_incidents_of_one_batch_are_linked_together(
    client: httpx.AsyncClient, app: FastAPI, manager: Actor, listen: Listen
) -> None:
    ci = f"san-{uuid.uuid4().hex[:6]}"
    older = await create(client, manager, configuration_item=ci, category="storage")
    problem = await create(client, manager, configuration_item=ci, category="storage")
    for p in (older, problem):  # the most recent known error wins
        r = await client.patch(
            f"/api/v1/problems/{p['id']}", headers=manager.headers, json={"known_error": True, "workaround": "remount"}
        )
        assert r.status_code == 200, r.text
    events = await listen("problem.incident_linked")
    first, second = (
        incident_data(configuration_item=ci, category="storage"),
        incident_data(configuration_item=ci, category="storage"),
    )
    other = incident_data(configuration_item=ci, category="network")
    batch = [
        incident_event("created", first, 1),
        incident_event("created", other, 1),
        incident_event("updated", {**first, "category": "network"}, 2),  # linked as it was created
        incident_event("created", second, 1),
        incident_event("created", second, 1),  # the same create again (another event id): already applied
    ]
    await apply(app, batch)
    got = await events.wait(problem["id"], count=2)
    assert [e["data"]["incident_id"] for e in got] == [first["id"], second["id"]]
    assert [e["correlationid"] for e in got] == [batch[0].correlationid, batch[3].correlationid]
    assert got[0]["sequence"] < got[1]["sequence"]
    assert all(e["data"]["automatic"] is True for e in got)
    listed = (await client.get(f"/api/v1/problems/{problem['id']}/incidents", headers=manager.headers)).json()
    assert sorted(i["incident_id"] for i in listed) == sorted([first["id"], second["id"]])
    assert events.of(older["id"]) == []
    await apply(app, [incident_event("created", first, 1)])  # the create again: older than what is stored
    listed = (await client.get(f"/api/v1/problems/{problem['id']}/incidents", headers=manager.headers)).json()
    assert len(listed) == 2


def _batches(queue: str) -> float:
    return REGISTRY.get_sample_value("itsm_consumer_batch_size_count", {"queue": queue}) or 0.0


async def test_a_burst_of_incident_events_is_a_few_transactions(
    app: FastAPI, as_incident: Any, names: dict[str, Any]
) -> None:
    queue = f"{names['queue_prefix']}problem.incidents"
    before = _batches(queue)
    burst = [incident_data() for _ in range(150)]
    channel = await as_incident.channel()
    exchange = await channel.get_exchange(names["exchange"])
    messages = [
        aio_pika.Message(
            json.dumps(
                new_event(service="incident", type="incident.created", subject=i["id"], data=i, sequence=1)
            ).encode(),
            content_type="application/cloudevents+json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=as_incident.url.user,
        )
        for i in burst
    ]
    await asyncio.gather(*(exchange.publish(m, routing_key="incident.created") for m in messages))
    await channel.close()

    async def all_there() -> bool:
        async with app.state.sessions() as session:
            count = await session.scalar(
                text("SELECT count(*) FROM incident_ref WHERE id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": [i["id"] for i in burst]},
            )
        return count == len(burst)

    await eventually(all_there, what="150 incidents in the read model")
    assert _batches(queue) - before < len(burst)
