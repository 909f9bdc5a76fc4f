"""Incidents known from events: the read model under duplicates and reordering, linking, auto-linking, and the
events the incident service consumes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
import httpx
from fastapi import FastAPI
from itsm_shared.contracts import ProblemIncidentLinkData, ProblemResolvedData
from itsm_shared.testing import Listen, eventually
from sqlalchemy import text

from .conftest import Actor, create, incident_data, publish_incident_event


async def ref_row(app: FastAPI, incident_id: str) -> Any:
    async with app.state.sessions() as session:
        return (await session.execute(text("SELECT * FROM incident_ref WHERE id = :i"), {"i": incident_id})).first()


async def test_read_model_is_idempotent_and_order_safe(app: FastAPI, as_incident: Any, names: dict[str, Any]) -> None:
    incident = incident_data()
    newer = {**incident, "status": "in_progress", "title": "Printer jam (floor 2)"}
    event_id = await publish_incident_event(as_incident, names, "updated", newer, sequence=3)
    await publish_incident_event(as_incident, names, "updated", newer, sequence=3, event_id=event_id)  # duplicate
    await publish_incident_event(as_incident, names, "created", incident, sequence=1)  # older, arrives late
    assert await eventually(lambda: ref_row(app, incident["id"]))
    await asyncio.sleep(0.5)
    row = await ref_row(app, incident["id"])
    assert (row.status, row.title, row.sequence) == ("in_progress", "Printer jam (floor 2)", 3)
    async with app.state.sessions() as session:
        count = (
            await session.execute(text("SELECT count(*) FROM inbox WHERE event_id = :e"), {"e": event_id})
        ).scalar()
    assert count == 1


async def test_link_unknown_incident_is_422_and_known_one_links(
    client: httpx.AsyncClient,
    app: FastAPI,
    as_incident: Any,
    names: dict[str, Any],
    agent: Actor,
    manager: Actor,
    listen: Listen,
) -> None:
    problem = await create(client, manager, workaround="reboot")
    unknown = await client.post(
        f"/api/v1/problems/{problem['id']}/incidents", headers=agent.headers, json={"incident_id": str(uuid.uuid4())}
    )
    assert unknown.status_code == 422
    incident = incident_data()
    await publish_incident_event(as_incident, names, "created", incident, sequence=1)
    assert await eventually(lambda: ref_row(app, incident["id"]))
    events = await listen("problem.incident_linked", "problem.incident_unlinked")
    linked = await client.post(
        f"/api/v1/problems/{problem['id']}/incidents", headers=agent.headers, json={"incident_id": incident["id"]}
    )
    assert linked.status_code == 201, linked.text
    assert linked.json()["number"] == incident["number"]
    listed = (await client.get(f"/api/v1/problems/{problem['id']}/incidents", headers=agent.headers)).json()
    assert [i["incident_id"] for i in listed] == [incident["id"]]
    other = await create(client, manager)
    taken = await client.post(
        f"/api/v1/problems/{other['id']}/incidents", headers=agent.headers, json={"incident_id": incident["id"]}
    )
    assert taken.status_code == 409
    unlinked = await client.delete(
        f"/api/v1/problems/{problem['id']}/incidents/{incident['id']}", headers=agent.headers
    )
    assert unlinked.status_code == 204
    got = await events.wait(problem["id"], count=2)
    assert [e["type"] for e in got] == ["itsm.problem.incident_linked", "itsm.problem.incident_unlinked"]
    link = ProblemIncidentLinkData.model_validate(got[0]["data"])
    assert (str(link.id), str(link.incident_id), link.workaround) == (problem["id"], incident["id"], "reboot")
    assert got[0]["sequence"] < got[1]["sequence"], "the incident service orders link/unlink by sequence"


async def test_new_incident_matching_an_open_known_error_is_linked_automatically(
    client: httpx.AsyncClient,
    app: FastAPI,
    as_incident: Any,
    names: dict[str, Any],
    manager: Actor,
    listen: Listen,
) -> None:
    ci = f"db-{uuid.uuid4().hex[:6]}"
    problem = await create(client, manager, configuration_item=ci, category="database")
    r = await client.patch(
        f"/api/v1/problems/{problem['id']}",
        headers=manager.headers,
        json={"known_error": True, "workaround": "fail over to the replica"},
    )
    assert r.status_code == 200
    events = await listen("problem.incident_linked")
    matching = incident_data(configuration_item=ci, category="database")
    other_category = incident_data(configuration_item=ci, category="network")
    await publish_incident_event(as_incident, names, "created", other_category, sequence=1)
    await publish_incident_event(as_incident, names, "created", matching, sequence=1)
    got = await events.wait(problem["id"])
    assert len(got) == 1
    assert got[0]["data"]["incident_id"] == matching["id"]
    assert got[0]["data"]["workaround"] == "fail over to the replica"
    assert got[0]["data"]["automatic"] is True
    listed = (await client.get(f"/api/v1/problems/{problem['id']}/incidents", headers=manager.headers)).json()
    assert [(i["incident_id"], i["automatic"]) for i in listed] == [(matching["id"], True)]
    await asyncio.sleep(1)  # no second link shows up
    assert events.of(problem["id"]) == got


async def test_a_new_incident_is_linked_automatically_even_when_its_created_event_comes_last(
    client: httpx.AsyncClient,
    app: FastAPI,
    as_incident: Any,
    names: dict[str, Any],
    manager: Actor,
    listen: Listen,
) -> None:
    """Two incident replicas each relay their own outbox rows, so an incident's later events (an SLA warning, an
    update) can reach this service before its `incident.created` (seen under a kill -9 and after a database outage,
    tests/e2e/test_replicas.py). The created event still links the incident, on what the read model knows of it by
    then: once, and not when the incident was deleted meanwhile."""
    ci = f"db-{uuid.uuid4().hex[:6]}"
    problem = await create(client, manager, configuration_item=ci, category="database")
    r = await client.patch(
        f"/api/v1/problems/{problem['id']}", headers=manager.headers, json={"known_error": True, "workaround": "wait"}
    )
    assert r.status_code == 200
    events = await listen("problem.incident_linked")
    apart, together, deleted = (incident_data(configuration_item=ci, category="database") for _ in range(3))
    # In two batches: the later event applied first, the created event found older than the read model's row.
    await publish_incident_event(as_incident, names, "sla_warning", apart, sequence=2)
    assert await eventually(lambda: ref_row(app, apart["id"]))
    await publish_incident_event(as_incident, names, "created", apart, sequence=1)
    # Probably in one batch: the same, folded together.
    await publish_incident_event(as_incident, names, "updated", together, sequence=3)
    await publish_incident_event(as_incident, names, "created", together, sequence=1)
    # Deleted before its created event arrived: nothing to link.
    await publish_incident_event(as_incident, names, "deleted", deleted, sequence=2)
    assert await eventually(lambda: ref_row(app, deleted["id"]))
    await publish_incident_event(as_incident, names, "created", deleted, sequence=1)
    got = await events.wait(problem["id"], count=2)
    await asyncio.sleep(1)  # a third link, or a second one of these, would show by now
    got = events.of(problem["id"])
    assert sorted(e["data"]["incident_id"] for e in got) == sorted([apart["id"], together["id"]])
    assert all(e["data"]["automatic"] is True for e in got)
    listed = (await client.get(f"/api/v1/problems/{problem['id']}/incidents", headers=manager.headers)).json()
    assert sorted(i["incident_id"] for i in listed) == sorted([apart["id"], together["id"]])


async def test_resolving_publishes_the_linked_incidents(
    client: httpx.AsyncClient,
    app: FastAPI,
    as_incident: Any,
    names: dict[str, Any],
    agent: Actor,
    manager: Actor,
    listen: Listen,
) -> None:
    problem = await create(client, manager)
    incidents = [incident_data() for _ in range(2)]
    for incident in incidents:
        await publish_incident_event(as_incident, names, "created", incident, sequence=1)
        assert await eventually(lambda i=incident: ref_row(app, i["id"]))
        r = await client.post(
            f"/api/v1/problems/{problem['id']}/incidents", headers=agent.headers, json={"incident_id": incident["id"]}
        )
        assert r.status_code == 201
    for step, fields in [
        ("assessed", {}),
        ("root_cause_analysis", {}),
        ("fix_in_progress", {"root_cause": "bad patch"}),
    ]:
        assert (
            await client.patch(
                f"/api/v1/problems/{problem['id']}", headers=manager.headers, json={"status": step, **fields}
            )
        ).status_code == 200
    events = await listen("problem.resolved")
    change_id = str(uuid.uuid4())
    resolved = await client.patch(
        f"/api/v1/problems/{problem['id']}",
        headers=manager.headers,
        json={
            "status": "resolved",
            "resolution_code": "fix_applied",
            "fix": "rolled back",
            "change_id": change_id,
            "resolve_linked_incidents": True,
        },
    )
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["change_id"] == change_id
    got = await events.wait(problem["id"])
    data = ProblemResolvedData.model_validate(got[0]["data"])
    assert data.resolve_linked_incidents is True
    assert sorted(map(str, data.incident_ids)) == sorted(i["id"] for i in incidents)
    assert data.fix == "rolled back"


async def test_malformed_incident_event_is_parked(
    app: FastAPI, amqp: Any, as_incident: Any, names: dict[str, Any]
) -> None:
    channel = await amqp.channel()
    exchange = await channel.get_exchange(names["exchange"])
    await exchange.publish(aio_pika.Message(b"{not json", message_id="bad-1"), routing_key="incident.created")
    incident = incident_data()
    await publish_incident_event(as_incident, names, "created", incident, sequence=1)
    assert await eventually(lambda: ref_row(app, incident["id"]))
    dlq = await channel.declare_queue(f"{names['queue_prefix']}problem.incidents.dlq", passive=True)
    message = await eventually(lambda: dlq.get(fail=False))
    assert message is not None
    assert "not a valid event" in message.headers["x-itsm-error"]
    await message.ack()
    await channel.close()
