"""Incidents through the real gateway (CONTRACT §2, §4, §8): users from the auth API, every request through
Traefik, and a plain AMQP subscriber bound to the stack's exchange checking each CloudEvent."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import httpx
import stack as stack_module  # deploy/, on the path from conftest
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE
from itsm_shared.testing import Listen

from .conftest import User, new_user
from .incidents_support import INCIDENTS, assert_sla_block, create, get, listed, patch, transitions

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


async def test_a_list_filter_the_database_refuses_is_422_and_no_service_logs_each_request(
    http: httpx.AsyncClient, agent: User, stack: stack_module.Stack
) -> None:
    """A filter value PostgreSQL cannot take (U+0000 in text), sent to the list's statement on the driver: 422, as
    SQLAlchemy's statements answer. And the services write no access line per request (the gateway keeps the
    access log; they are started with --no-access-log, which their logging set-up once turned back on: a JSON line
    per request, 1.5 % of a list's CPU): the 422 is logged, the request line is not."""
    log = stack.settings.run_dir / "incident.log"
    start = log.stat().st_size
    marker = f"nul{uuid.uuid4().hex[:10]}"
    response = await http.get(INCIDENTS, headers=agent.headers(), params={"category": f"{marker}\x00"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert (await http.get(INCIDENTS, headers=agent.headers(), params={"category": marker})).status_code == 200
    written = log.read_bytes()[start:].decode()
    assert "database refused a value of the request" in written, "the log is written as it goes"
    assert marker not in written, "no access line with the request's path"


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
