"""The incident HTTP API, its events (CONTRACT §8): what each change publishes, with the request's actor and
correlation id, and what a refused change does not."""

from __future__ import annotations

import uuid

import aio_pika
import httpx
from itsm_shared.testing import EventProbe

from .conftest import Actor, create
from .router_support import API, assert_problem, get, history, reach, unique, with_cid

# ---------------------------------------------------------------- events (CONTRACT §8)


async def test_changes_publish_cloudevents(
    client: httpx.AsyncClient, agent: Actor, admin: Actor, probe: EventProbe
) -> None:
    cid = unique("corr")
    response = await client.post(
        API, headers=with_cid(agent, cid), json={"title": "VPN drops", "impact": 2, "urgency": 3}
    )
    assert response.status_code == 201 and response.headers["X-Correlation-ID"] == cid
    incident = response.json()
    subject = incident["id"]

    created = await probe.one(subject, "created", sequence=1)
    assert created["specversion"] == "1.0" and created["source"] == "/itsm/incident"
    assert created["type"] == "itsm.incident.created" and created["subject"] == subject
    assert created["datacontenttype"] == "application/json" and created["time"]
    assert created["actorid"] == str(agent.id) and created["correlationid"] == cid
    assert created["data"]["number"] == incident["number"] and created["data"]["priority"] == 4
    message = probe.message_of(created)
    assert message.message_id == created["id"] and message.routing_key == "incident.created"
    assert message.content_type == "application/cloudevents+json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT

    group, assignee = unique("group"), str(uuid.uuid4())
    changed = await client.patch(
        f"{API}/{subject}",
        headers=with_cid(agent, cid),
        json={"title": "VPN drops hourly", "assignment_group": group, "assignee_id": assignee},
    )
    assert changed.status_code == 200
    updated = await probe.one(subject, "updated", sequence=2)
    assert updated["data"]["changes"] == {
        "title": ["VPN drops", "VPN drops hourly"],
        "assignment_group": [None, group],
        "assignee_id": [None, assignee],
    }
    assert updated["data"]["title"] == "VPN drops hourly" and updated["correlationid"] == cid
    assigned = await probe.one(subject, "assigned", sequence=2)
    assert assigned["data"]["changes"] == {"assignment_group": [None, group], "assignee_id": [None, assignee]}
    assert assigned["data"]["assignee_id"] == assignee and assigned["actorid"] == str(agent.id)

    cid2 = unique("corr")
    moved = await client.patch(f"{API}/{subject}", headers=with_cid(agent, cid2), json={"status": "in_progress"})
    assert moved.status_code == 200
    status_changed = await probe.one(subject, "status_changed", sequence=3)
    assert status_changed["data"]["changes"] == {"status": ["new", "in_progress"]}
    assert status_changed["data"]["status"] == "in_progress" and status_changed["correlationid"] == cid2
    assert (await probe.one(subject, "updated", sequence=3))["data"]["changes"]["status"] == ["new", "in_progress"]

    note = await client.post(
        f"{API}/{subject}/notes",
        headers=with_cid(agent, cid2),
        json={"body": "checking the tunnel", "visibility": "internal"},
    )
    assert note.status_code == 201
    noted = await probe.one(subject, "note_added", sequence=3)
    assert noted["data"]["note_id"] == note.json()["id"] and noted["data"]["visibility"] == "internal"
    assert noted["data"]["body"] == "checking the tunnel" and noted["actorid"] == str(agent.id)

    deleted = await client.delete(f"{API}/{subject}", headers=with_cid(admin, cid2))
    assert deleted.status_code == 204
    gone = await probe.one(subject, "deleted", sequence=4)
    assert gone["actorid"] == str(admin.id) and gone["correlationid"] == cid2
    # Everything before the delete has been published by now: nothing else was said about this incident.
    assert sorted((e["type"].rsplit(".", 1)[1], e["sequence"]) for e in probe.of(subject)) == [
        ("assigned", 2),
        ("created", 1),
        ("deleted", 4),
        ("note_added", 3),
        ("status_changed", 3),
        ("updated", 2),
        ("updated", 3),
    ]


async def test_refused_changes_publish_nothing(client: httpx.AsyncClient, agent: Actor, probe: EventProbe) -> None:
    incident = await create(client, agent)
    url = f"{API}/{incident['id']}"
    assert_problem(await client.patch(url, headers=agent.headers, json={"status": "closed"}), 409)
    assert_problem(await client.patch(url, headers={**agent.headers, "If-Match": '"9"'}, json={"title": "x"}), 412)
    assert_problem(await client.patch(url, headers=agent.headers, json={"title": "x", "version": 9}), 422)
    assert_problem(await client.patch(url, headers=agent.headers, json={"title": "x", "status": "on_hold"}), 422)
    assert (await client.patch(url, headers=agent.headers, json={"title": "after all"})).status_code == 200
    await probe.one(incident["id"], "updated", sequence=2)
    assert sorted((e["type"], e["sequence"]) for e in probe.of(incident["id"])) == [
        ("itsm.incident.created", 1),
        ("itsm.incident.updated", 2),
    ]
    assert probe.of(incident["id"], "updated")[0]["data"]["changes"] == {"title": ["Mail is down", "after all"]}


async def test_resolving_a_parent_over_http_carries_the_request_into_the_children(
    client: httpx.AsyncClient, agent: Actor, probe: EventProbe
) -> None:
    parent = await reach(client, agent, "in_progress")
    child = await create(client, agent, parent_id=parent["id"])
    cid = unique("cascade")
    resolved = await client.patch(
        f"{API}/{parent['id']}",
        headers=with_cid(agent, cid),
        json={"status": "resolved", "resolution_code": "upstream", "resolution_notes": "carrier fixed the link"},
    )
    assert resolved.status_code == 200
    after = await get(client, agent, child["id"])
    assert (after["status"], after["resolution_code"], after["resolution_notes"]) == (
        "resolved",
        "upstream",
        "carrier fixed the link",
    )
    assert {r["field"] for r in await history(client, agent, child["id"])} >= {
        "status",
        "resolution_code",
        "resolution_notes",
        "resolved_at",
    }
    event = await probe.one(child["id"], "status_changed", sequence=after["version"])
    assert event["correlationid"] == cid and event["actorid"] == str(agent.id)
    assert event["data"]["resolution_notes"] == "carrier fixed the link"
