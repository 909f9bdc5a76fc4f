"""Incidents through the real gateway (CONTRACT §2, §4, §8): users from the auth API, every request through
Traefik, and a plain AMQP subscriber bound to the stack's exchange checking each CloudEvent."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import httpx
import pytest
import stack as stack_module
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, new_event, routing_key
from itsm_shared.testing import Listen, eventually

from .conftest import bearer, token

PASSWORD = "a perfectly fine password"
INCIDENTS = "/api/v1/incidents"


@dataclass
class User:
    id: str
    username: str
    access_token: str

    def headers(self, correlation_id: str | None = None, **extra: str) -> dict[str, str]:
        headers = {**bearer(self.access_token), **extra}
        if correlation_id is not None:
            headers["X-Correlation-ID"] = correlation_id
        return headers


async def new_user(http: httpx.AsyncClient, admin: str, *roles: str) -> User:
    username = f"inc{uuid.uuid4().hex[:10]}"
    created = await http.post(
        "/api/v1/auth/users",
        headers=bearer(admin),
        json={"username": username, "password": PASSWORD, "roles": list(roles)},
    )
    assert created.status_code == 201, created.text
    return User(created.json()["id"], username, (await token(http, username, PASSWORD))["access_token"])


@pytest.fixture
async def agent(http: httpx.AsyncClient, admin: str) -> User:
    return await new_user(http, admin, "agent")


@pytest.fixture
async def requester(http: httpx.AsyncClient, admin: str) -> User:
    return await new_user(http, admin, "requester")


async def create(http: httpx.AsyncClient, who: User, cid: str | None = None, **fields: Any) -> dict[str, Any]:
    body = {"title": "Mail is down", "impact": 2, "urgency": 2, **fields}
    response = await http.post(INCIDENTS, headers=who.headers(cid), json=body)
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == f'"{response.json()["version"]}"'
    return dict(response.json())


async def patch(http: httpx.AsyncClient, who: User, ref: str, cid: str | None = None, **body: Any) -> dict[str, Any]:
    response = await http.patch(f"{INCIDENTS}/{ref}", headers=who.headers(cid), json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def get(http: httpx.AsyncClient, who: User, ref: str) -> dict[str, Any]:
    response = await http.get(f"{INCIDENTS}/{ref}", headers=who.headers())
    assert response.status_code == 200, response.text
    return dict(response.json())


async def listed(http: httpx.AsyncClient, who: User, **params: Any) -> list[str]:
    response = await http.get(INCIDENTS, headers=who.headers(), params=params)
    assert response.status_code == 200, response.text
    return [i["id"] for i in response.json()["items"]]


async def transitions(http: httpx.AsyncClient, who: User, ref: str) -> dict[str, list[str]]:
    response = await http.get(f"{INCIDENTS}/{ref}/transitions", headers=who.headers())
    assert response.status_code == 200, response.text
    return {t["status"]: t["required_fields"] for t in response.json()}


def assert_sla_block(incident: dict[str, Any]) -> None:
    sla = incident["sla"]
    assert sla["response_due"] and sla["resolution_due"], sla
    assert sla["response_due"] <= sla["resolution_due"]
    assert sla["breached"] is False
    for kind in ("response", "resolution"):
        assert {"due_at", "state", "paused", "breached", "percentage", "elapsed_seconds"} <= set(sla[kind]), sla


# ---------------------------------------------------------------- creation and visibility


async def test_agent_and_requester_create_and_requesters_see_only_their_own(
    http: httpx.AsyncClient, admin: str, agent: User, requester: User
) -> None:
    other = await new_user(http, admin, "requester")
    for_caller = await create(http, agent, caller_id=requester.id, title="Laptop will not boot", impact=1, urgency=1)
    assert for_caller["number"].startswith("INC") and for_caller["status"] == "new"
    assert for_caller["priority"] == 1 and for_caller["caller_id"] == requester.id
    assert_sla_block(for_caller)
    own = await create(http, requester, title="Cannot print", impact=3, urgency=3)
    assert own["caller_id"] == requester.id and own["created_by"] == requester.id and own["priority"] == 5
    assert_sla_block(own)
    by_number = await get(http, requester, own["number"])
    assert by_number["id"] == own["id"]

    # The requester sees the two incidents they are the caller of; another requester sees neither.
    mine = await listed(http, requester, limit=200)
    assert {for_caller["id"], own["id"]} <= set(mine)
    assert all(incident["caller_id"] == requester.id for incident in [await get(http, requester, i) for i in mine])
    for incident in (for_caller, own):
        for ref in (incident["id"], incident["number"]):
            hidden = await http.get(f"{INCIDENTS}/{ref}", headers=other.headers())
            assert hidden.status_code == 404, hidden.text
            assert hidden.headers["content-type"] == "application/problem+json"
        for path in ("notes", "history", "transitions"):
            assert (await http.get(f"{INCIDENTS}/{incident['id']}/{path}", headers=other.headers())).status_code == 404
        note = await http.post(
            f"{INCIDENTS}/{incident['id']}/notes",
            headers=other.headers(),
            json={"body": "me too", "visibility": "public"},
        )
        assert note.status_code == 404
    assert not {for_caller["id"], own["id"]} & set(await listed(http, other, limit=200))
    assert not {for_caller["id"], own["id"]} & set(await listed(http, other, caller_id=requester.id))

    # A requester comments publicly on their own incident and never sees work notes.
    work = await http.post(
        f"{INCIDENTS}/{own['id']}/notes",
        headers=agent.headers(),
        json={"body": "checked the spooler", "visibility": "internal"},
    )
    comment = await http.post(
        f"{INCIDENTS}/{own['id']}/notes",
        headers=requester.headers(),
        json={"body": "still broken", "visibility": "public"},
    )
    assert work.status_code == comment.status_code == 201
    seen = (await http.get(f"{INCIDENTS}/{own['id']}/notes", headers=requester.headers())).json()
    assert [n["body"] for n in seen] == ["still broken"]
    assert len((await http.get(f"{INCIDENTS}/{own['id']}/notes", headers=agent.headers())).json()) == 2
    # ... and cannot move it: a requester's PATCH is refused.
    assert (
        await http.patch(f"{INCIDENTS}/{own['id']}", headers=requester.headers(), json={"urgency": 1})
    ).status_code == 403
    anonymous = await http.get(INCIDENTS)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")


# ---------------------------------------------------------------- lifecycle and its events


@dataclass
class Expected:
    """Which events a request must cause: types, the sequence they carry, the correlation id it sent."""

    items: list[tuple[str, int, str]] = field(default_factory=list)

    def add(self, cid: str, version: int, *actions: str) -> None:
        self.items.extend((f"itsm.incident.{a}", version, cid) for a in actions)


async def test_lifecycle_with_transitions_notes_history_and_cloudevents(
    http: httpx.AsyncClient,
    listen: Listen,
    agent: User,
    requester: User,
) -> None:
    probe = await listen("incident.#")
    expected = Expected()

    def cid() -> str:
        return f"e2e-{uuid.uuid4()}"

    c = cid()
    incident = await create(http, agent, c, caller_id=requester.id, title="ERP unreachable", category="erp")
    ref = incident["id"]
    expected.add(c, 1, "created")
    assert incident["version"] == 1
    assert transitions_now(await transitions(http, agent, ref)) == {
        "in_progress": [],
        "on_hold": ["hold_reason"],
        "resolved": ["resolution_code", "resolution_notes"],
        "cancelled": [],
    }
    assert await transitions(http, requester, ref) == {}, "a requester may not move it"

    c = cid()
    step = await patch(http, agent, ref, c, status="in_progress", assignee_id=agent.id, assignment_group="erp-ops")
    assert step["status"] == "in_progress" and step["version"] == 2
    assert step["sla"]["response"]["state"] == "stopped", "leaving new is the response"
    expected.add(c, 2, "updated", "status_changed", "assigned")
    assert set(await transitions(http, agent, ref)) == {"on_hold", "resolved", "cancelled"}

    missing = await http.patch(f"{INCIDENTS}/{ref}", headers=agent.headers(), json={"status": "on_hold"})
    assert missing.status_code == 422, "on_hold needs a hold_reason"
    c = cid()
    step = await patch(http, agent, ref, c, status="on_hold", hold_reason="awaiting_vendor")
    assert step["hold_reason"] == "awaiting_vendor" and step["sla"]["resolution"]["paused"] is True
    expected.add(c, 3, "updated", "status_changed")
    assert set(await transitions(http, agent, ref)) == {"in_progress", "resolved", "cancelled"}

    c = cid()
    step = await patch(http, agent, ref, c, status="in_progress")
    assert step["hold_reason"] is None and step["sla"]["resolution"]["paused"] is False
    expected.add(c, 4, "updated", "status_changed")

    c = cid()
    note = await http.post(
        f"{INCIDENTS}/{ref}/notes",
        headers=agent.headers(c),
        json={"body": "vendor patched the ERP gateway", "visibility": "internal"},
    )
    assert note.status_code == 201, note.text
    assert note.json()["visibility"] == "internal" and note.json()["author_id"] == agent.id
    expected.add(c, 4, "note_added")

    unresolved = await http.patch(f"{INCIDENTS}/{ref}", headers=agent.headers(), json={"status": "resolved"})
    assert unresolved.status_code == 422
    assert {tuple(e["loc"]) for e in unresolved.json()["errors"]} >= {
        ("body", "resolution_code"),
        ("body", "resolution_notes"),
    }
    c = cid()
    step = await patch(
        http, agent, ref, c, status="resolved", resolution_code="fixed", resolution_notes="vendor patch applied"
    )
    assert step["resolved_at"] and step["sla"]["resolution"]["state"] == "stopped"
    expected.add(c, 5, "updated", "status_changed")
    assert set(await transitions(http, agent, ref)) == {"closed", "in_progress"}

    c = cid()
    step = await patch(http, agent, ref, c, status="closed")
    assert step["status"] == "closed" and step["closed_at"] and step["version"] == 6
    expected.add(c, 6, "updated", "status_changed")
    assert await transitions(http, agent, ref) == {}
    final = await http.patch(f"{INCIDENTS}/{ref}", headers=agent.headers(), json={"status": "in_progress"})
    assert final.status_code == 409 and final.headers["content-type"] == "application/problem+json"

    history = (await http.get(f"{INCIDENTS}/{ref}/history", headers=agent.headers())).json()
    statuses = [(h["old"], h["new"]) for h in history if h["field"] == "status"]
    assert statuses == [
        ("new", "in_progress"),
        ("in_progress", "on_hold"),
        ("on_hold", "in_progress"),
        ("in_progress", "resolved"),
        ("resolved", "closed"),
    ]
    assert {h["field"] for h in history} >= {"assignee_id", "assignment_group", "hold_reason", "resolution_code"}
    assert {h["actor_id"] for h in history} == {agent.id}
    notes = (await http.get(f"{INCIDENTS}/{ref}/notes", headers=agent.headers())).json()
    assert [n["body"] for n in notes] == ["vendor patched the ERP gateway"]

    # Every event, checked as a subscriber sees it.
    await probe.wait(ref, count=len(expected.items))
    await asyncio.sleep(0.3)  # and no more than those
    mine = probe.of(ref)
    # the official SDK parses each one: a malformed envelope is kept without an event
    assert all(a.event is not None for a in probe.arrivals), [a.message.body for a in probe.arrivals if not a.event]
    got = [(event["type"], event["sequence"], event["correlationid"]) for event in mine]
    assert sorted(got) == sorted(expected.items), got
    for event in mine:
        message = probe.message_of(event)
        assert message.message_id == event["id"]
        assert message.routing_key == event["type"].removeprefix("itsm.")
        assert message.content_type == CLOUDEVENTS_CONTENT_TYPE
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert event["specversion"] == "1.0" and event["source"] == "/itsm/incident"
        assert event["datacontenttype"] == "application/json" and event["actorid"] == agent.id
        raw = json.loads(message.body)
        assert isinstance(raw["sequence"], int)
        if event["type"] == "itsm.incident.note_added":
            assert event["data"]["incident_id"] == ref and event["data"]["visibility"] == "internal"
        else:
            assert event["data"]["id"] == ref and event["data"]["version"] == event["sequence"]
    assigned = next(e for e in mine if e["type"] == "itsm.incident.assigned")
    assert assigned["data"]["changes"] == {"assignee_id": [None, agent.id], "assignment_group": [None, "erp-ops"]}
    closing = [e for e in mine if e["type"] == "itsm.incident.status_changed" and e["sequence"] == 6]
    assert closing[0]["data"]["changes"]["status"] == ["resolved", "closed"]


def transitions_now(offered: dict[str, list[str]]) -> dict[str, list[str]]:
    return {status: sorted(fields) for status, fields in offered.items()}


# ---------------------------------------------------------------- lists


async def test_list_filters_search_and_cursor(http: httpx.AsyncClient, agent: User, requester: User) -> None:
    category = f"cat-{uuid.uuid4().hex[:8]}"
    word = f"zebra{uuid.uuid4().hex[:6]}"
    started = (await http.get(INCIDENTS, headers=agent.headers(), params={"limit": 1})).json()
    assert "items" in started and "next_cursor" in started
    high = await create(
        http,
        agent,
        category=category,
        impact=1,
        urgency=1,
        assignment_group="network",
        description=f"the {word} router",
    )
    low = await create(
        http, agent, category=category, impact=3, urgency=3, caller_id=requester.id, title="Slow wiki search"
    )
    held = await create(http, agent, category=category, assignee_id=agent.id, title="Badge reader offline")
    await patch(http, agent, held["id"], status="on_hold", hold_reason="awaiting_vendor")

    assert set(await listed(http, agent, category=category)) == {high["id"], low["id"], held["id"]}
    assert await listed(http, agent, category=category, priority=1) == [high["id"]]
    assert await listed(http, agent, category=category, status="on_hold") == [held["id"]]
    assert set(await listed(http, agent, category=category, status="new,on_hold")) == {
        high["id"],
        low["id"],
        held["id"],
    }
    assert await listed(http, agent, category=category, assignment_group="network") == [high["id"]]
    assert await listed(http, agent, category=category, assignee_id=agent.id) == [held["id"]]
    assert await listed(http, agent, category=category, caller_id=requester.id) == [low["id"]]
    assert await listed(http, agent, q=word) == [high["id"]]
    assert await listed(http, agent, category=category, q="badge reader") == [held["id"]]
    assert await listed(http, agent, category=category, created_after=held["created_at"]) == [held["id"]]
    assert await listed(http, agent, category=category, created_before=low["created_at"]) == [high["id"]]
    assert set(await listed(http, agent, category=category, sla_breached="false")) == {
        high["id"],
        low["id"],
        held["id"],
    }
    assert await listed(http, agent, category=category, problem_id=str(uuid.uuid4())) == []

    # Sorted and paged with a cursor, one at a time.
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"category": category, "limit": 1, "sort": "priority"}
        if cursor:
            params["cursor"] = cursor
        body = (await http.get(INCIDENTS, headers=agent.headers(), params=params)).json()
        pages += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [high["id"], held["id"], low["id"]]

    for bad in ({"limit": 0}, {"limit": 201}, {"status": "sleeping"}, {"priority": 9}, {"caller_id": "nobody"}):
        response = await http.get(INCIDENTS, headers=agent.headers(), params=bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.headers["content-type"] == "application/problem+json"


# ---------------------------------------------------------------- ETag and Idempotency-Key


async def test_if_match_and_idempotency_key(http: httpx.AsyncClient, agent: User) -> None:
    incident = await create(http, agent, title="Disk quota exceeded")
    read = await http.get(f"{INCIDENTS}/{incident['id']}", headers=agent.headers())
    assert read.headers["etag"] == '"1"'
    updated = await http.patch(
        f"{INCIDENTS}/{incident['id']}",
        headers=agent.headers(**{"If-Match": read.headers["etag"]}),
        json={"urgency": 1},
    )
    assert updated.status_code == 200 and updated.headers["etag"] == '"2"'
    assert updated.json()["priority"] == 2
    stale = await http.patch(
        f"{INCIDENTS}/{incident['id']}",
        headers=agent.headers(**{"If-Match": read.headers["etag"]}),
        json={"urgency": 3},
    )
    assert stale.status_code == 412 and stale.headers["content-type"] == "application/problem+json"
    assert (await get(http, agent, incident["id"]))["urgency"] == 1, "a 412 changes nothing"
    read_only = await http.patch(f"{INCIDENTS}/{incident['id']}", headers=agent.headers(), json={"priority": 1})
    assert read_only.status_code == 422

    key = f"e2e-{uuid.uuid4()}"
    category = f"idem-{uuid.uuid4().hex[:8]}"
    body = {"title": "New starter needs a laptop", "category": category, "impact": 3, "urgency": 2}
    first = await http.post(INCIDENTS, headers=agent.headers(**{"Idempotency-Key": key}), json=body)
    again = await http.post(INCIDENTS, headers=agent.headers(**{"Idempotency-Key": key}), json=body)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
    assert await listed(http, agent, category=category) == [first.json()["id"]]
    other = await http.post(
        INCIDENTS, headers=agent.headers(**{"Idempotency-Key": key}), json={**body, "title": "Another laptop"}
    )
    assert other.status_code == 422 and other.headers["content-type"] == "application/problem+json"
    assert await listed(http, agent, category=category) == [first.json()["id"]]


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
