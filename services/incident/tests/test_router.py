"""The incident HTTP API (CONTRACT §2-§4, §8) against the in-process app, its own database and the real broker."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI
from incident import automation
from incident.models import IncidentHistory
from itsm_shared.db import transaction
from itsm_shared.testing import EventProbe, TestIssuer
from sqlalchemy import text
from sqlmodel import select

from .conftest import Actor, create

API = "/api/v1/incidents"
PROBLEM = "application/problem+json"
STATUSES = ("new", "in_progress", "on_hold", "resolved", "closed", "cancelled")
ALLOWED = {  # CONTRACT §4
    "new": {"in_progress", "on_hold", "resolved", "cancelled"},
    "in_progress": {"on_hold", "resolved", "cancelled"},
    "on_hold": {"in_progress", "resolved", "cancelled"},
    "resolved": {"closed", "in_progress"},
    "closed": set(),
    "cancelled": set(),
}
REQUIRED = {"on_hold": ["hold_reason"], "resolved": ["resolution_code", "resolution_notes"]}
RESOLUTION = {"resolution_code": "fixed", "resolution_notes": "restarted the mail relay"}
NEEDS: dict[str, dict[str, Any]] = {"on_hold": {"hold_reason": "awaiting_vendor"}, "resolved": RESOLUTION}
PATH: dict[str, list[dict[str, Any]]] = {
    "new": [],
    "in_progress": [{"status": "in_progress"}],
    "on_hold": [{"status": "on_hold", "hold_reason": "awaiting_vendor"}],
    "resolved": [{"status": "in_progress"}, {"status": "resolved", **RESOLUTION}],
    "closed": [{"status": "resolved", **RESOLUTION}, {"status": "closed"}],
    "cancelled": [{"status": "cancelled"}],
}


def unique(prefix: str = "cat") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def with_cid(who: Actor, cid: str) -> dict[str, str]:
    return {**who.headers, "X-Correlation-ID": cid}


async def patch(client: httpx.AsyncClient, who: Actor, ref: Any, **fields: Any) -> dict[str, Any]:
    response = await client.patch(f"{API}/{ref}", headers=who.headers, json=fields)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def get(client: httpx.AsyncClient, who: Actor, ref: Any) -> dict[str, Any]:
    response = await client.get(f"{API}/{ref}", headers=who.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def history(client: httpx.AsyncClient, who: Actor, ref: Any) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/{ref}/history", headers=who.headers)
    assert response.status_code == 200, response.text
    return list(response.json())


async def reach(client: httpx.AsyncClient, who: Actor, status: str, **fields: Any) -> dict[str, Any]:
    incident = await create(client, who, **fields)
    for step in PATH[status]:
        incident = await patch(client, who, incident["id"], **step)
    assert incident["status"] == status
    return incident


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = dict(response.json())
    assert body["status"] == status and body["title"] and body["type"] and "detail" in body
    assert "Traceback" not in response.text
    return body


async def listed(client: httpx.AsyncClient, who: Actor, **params: Any) -> list[str]:
    response = await client.get(API, headers=who.headers, params={"limit": 200, **params})
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    return [i["id"] for i in response.json()["items"]]


# ---------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    "authorization", [None, "Bearer not-a-jwt", "Basic YWRtaW46YWRtaW4=", "Bearer ", "expired", "foreign"]
)
async def test_without_a_valid_token_it_is_401_with_www_authenticate(
    client: httpx.AsyncClient, issuer: TestIssuer, agent: Actor, authorization: str | None
) -> None:
    incident = await create(client, agent)
    if authorization == "expired":
        authorization = f"Bearer {issuer.token('admin', ttl=-120)}"
    elif authorization == "foreign":
        authorization = f"Bearer {TestIssuer().token('admin')}"  # well formed, signed by a key nobody trusts
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, body in (
        ("GET", API, None),
        ("POST", API, {"title": "x"}),
        ("GET", f"{API}/{incident['id']}", None),
        ("PATCH", f"{API}/{incident['id']}", {"title": "x"}),
        ("DELETE", f"{API}/{incident['id']}", None),
        ("POST", f"{API}/{incident['id']}/notes", {"body": "x", "visibility": "public"}),
    ):
        response = await client.request(method, path, headers=headers, json=body)
        assert_problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await get(client, agent, incident["id"]))["version"] == 1


# ---------------------------------------------------------------- the state model over HTTP


@pytest.mark.parametrize("source", STATUSES)
async def test_transitions_list_the_allowed_targets_and_others_are_409(
    client: httpx.AsyncClient, agent: Actor, source: str
) -> None:
    incident = await reach(client, agent, source)
    offered = await client.get(f"{API}/{incident['id']}/transitions", headers=agent.headers)
    assert offered.status_code == 200
    assert {t["status"]: sorted(t["required_fields"]) for t in offered.json()} == {
        t: REQUIRED.get(t, []) for t in ALLOWED[source]
    }
    before = await history(client, agent, incident["id"])
    for target in sorted(set(STATUSES) - ALLOWED[source] - {source}):
        refused = await client.patch(
            f"{API}/{incident['id']}", headers=agent.headers, json={"status": target, **NEEDS.get(target, {})}
        )
        assert_problem(refused, 409)
    after = await get(client, agent, incident["id"])
    assert (after["status"], after["version"]) == (source, incident["version"])
    assert await history(client, agent, incident["id"]) == before
    for target in sorted(ALLOWED[source]):
        fresh = await reach(client, agent, source)
        moved = await client.patch(
            f"{API}/{fresh['id']}", headers=agent.headers, json={"status": target, **NEEDS.get(target, {})}
        )
        assert moved.status_code == 200, (source, target, moved.text)
        assert moved.json()["status"] == target and moved.headers["ETag"] == f'"{fresh["version"] + 1}"'


@pytest.mark.parametrize(
    ("source", "body", "missing"),
    [
        ("new", {"status": "on_hold"}, "hold_reason"),
        ("in_progress", {"status": "on_hold", "hold_reason": "awaiting_santa"}, "hold_reason"),
        ("in_progress", {"status": "resolved"}, "resolution_code"),
        ("on_hold", {"status": "resolved", "resolution_code": "fixed"}, "resolution_notes"),
        ("new", {"status": "done"}, "status"),
    ],
)
async def test_missing_or_invalid_transition_fields_are_422(
    client: httpx.AsyncClient, agent: Actor, source: str, body: dict[str, Any], missing: str
) -> None:
    incident = await reach(client, agent, source)
    before = await history(client, agent, incident["id"])
    refused = assert_problem(await client.patch(f"{API}/{incident['id']}", headers=agent.headers, json=body), 422)
    assert ["body", missing] in [e["loc"] for e in refused["errors"]]
    after = await get(client, agent, incident["id"])
    assert (after["status"], after["version"]) == (source, incident["version"])
    assert await history(client, agent, incident["id"]) == before


async def test_reopen_over_http(client: httpx.AsyncClient, agent: Actor) -> None:
    incident = await reach(client, agent, "resolved")
    reopened = await patch(client, agent, incident["id"], status="in_progress")
    assert reopened["reopen_count"] == 1 and reopened["resolution_code"] is None
    assert reopened["resolution_notes"] is None and reopened["resolved_at"] is None
    closed = await patch(client, agent, incident["id"], status="resolved", **RESOLUTION)
    closed = await patch(client, agent, incident["id"], status="closed")
    assert closed["closed_at"] and closed["reopen_count"] == 1
    final = await client.get(f"{API}/{incident['id']}/transitions", headers=agent.headers)
    assert final.json() == []


@pytest.mark.parametrize("role", ["requester", "auditor"])
async def test_who_cannot_change_an_incident_is_offered_no_transitions(
    client: httpx.AsyncClient, agent: Actor, actor: Any, role: str
) -> None:
    who = actor(role)
    incident = await create(client, agent, caller_id=str(who.id))
    offered = await client.get(f"{API}/{incident['id']}/transitions", headers=who.headers)
    assert offered.status_code == 200 and offered.json() == []


async def test_priority_follows_impact_and_urgency(client: httpx.AsyncClient, agent: Actor) -> None:
    matrix = {(1, 1): 1, (1, 2): 2, (2, 1): 2, (1, 3): 3, (2, 2): 3, (3, 1): 3, (2, 3): 4, (3, 2): 4, (3, 3): 5}
    for (impact, urgency), expected in matrix.items():
        created = await create(client, agent, impact=impact, urgency=urgency)
        assert created["priority"] == expected, (impact, urgency)
    incident = await create(client, agent, impact=3, urgency=3)
    for (impact, urgency), expected in matrix.items():
        incident = await patch(client, agent, incident["id"], impact=impact, urgency=urgency)
        assert incident["priority"] == expected, (impact, urgency)
    # from (3, 3): one of the two changes alone recomputes too
    assert (await patch(client, agent, incident["id"], impact=1))["priority"] == 3  # (1, 3)
    assert (await patch(client, agent, incident["id"], urgency=2))["priority"] == 2  # (1, 2)
    assert (await patch(client, agent, incident["id"], urgency=1))["priority"] == 1  # (1, 1)
    for bad in ({"impact": 0}, {"urgency": 4}, {"impact": None}):
        assert_problem(await client.patch(f"{API}/{incident['id']}", headers=agent.headers, json=bad), 422)


# ---------------------------------------------------------------- roles (CONTRACT §3)


async def test_a_requester_raises_incidents_for_themselves_only(
    client: httpx.AsyncClient, actor: Any, agent: Actor
) -> None:
    me, other = actor("requester"), actor("requester")
    category = unique()
    mine = await create(client, me, category=category)
    assert mine["caller_id"] == str(me.id) and mine["created_by"] == str(me.id)
    explicit = await create(client, me, category=category, caller_id=str(me.id))
    assert explicit["caller_id"] == str(me.id)
    for_other = await client.post(
        API, headers=me.headers, json={"title": "for someone else", "category": category, "caller_id": str(other.id)}
    )
    assert ["body", "caller_id"] in [e["loc"] for e in assert_problem(for_other, 422)["errors"]]
    assigned = await client.post(
        API, headers=me.headers, json={"title": "assign it", "category": category, "assignment_group": "network"}
    )
    assert_problem(assigned, 403)
    assert sorted(await listed(client, agent, category=category)) == sorted([mine["id"], explicit["id"]])


async def test_a_requester_sees_and_comments_on_their_own_incidents_only(
    client: httpx.AsyncClient, actor: Any, agent: Actor
) -> None:
    me, other = actor("requester"), actor("requester")
    category = unique()
    mine = await create(client, agent, caller_id=str(me.id), category=category)
    theirs = await create(client, agent, caller_id=str(other.id), category=category)
    for ref in (theirs["id"], theirs["number"]):
        assert_problem(await client.get(f"{API}/{ref}", headers=me.headers), 404)
    for suffix in ("/notes", "/history", "/transitions"):
        assert_problem(await client.get(f"{API}/{theirs['id']}{suffix}", headers=me.headers), 404)
    assert_problem(await client.patch(f"{API}/{theirs['id']}", headers=me.headers, json={"title": "x"}), 404)
    assert_problem(
        await client.post(
            f"{API}/{theirs['id']}/notes", headers=me.headers, json={"body": "x", "visibility": "public"}
        ),
        404,
    )
    assert (await get(client, me, mine["number"]))["id"] == mine["id"]
    assert await listed(client, me, category=category) == [mine["id"]]
    assert await listed(client, me, caller_id=str(other.id)) == []
    assert await listed(client, me, q="Mail", category=category) == [mine["id"]]

    assert_problem(await client.patch(f"{API}/{mine['id']}", headers=me.headers, json={"title": "mine now"}), 403)
    assert_problem(await client.delete(f"{API}/{mine['id']}", headers=me.headers), 403)
    notes = f"{API}/{mine['id']}/notes"
    for visibility, body in (("internal", "suspect the relay"), ("public", "we are on it")):
        response = await client.post(notes, headers=agent.headers, json={"body": body, "visibility": visibility})
        assert response.status_code == 201
    comment = await client.post(notes, headers=me.headers, json={"body": "thanks", "visibility": "public"})
    assert comment.status_code == 201 and comment.json()["author_id"] == str(me.id)
    assert_problem(await client.post(notes, headers=me.headers, json={"body": "psst", "visibility": "internal"}), 403)
    seen = (await client.get(notes, headers=me.headers)).json()
    assert [(n["visibility"], n["body"]) for n in seen] == [("public", "we are on it"), ("public", "thanks")]
    assert len((await client.get(notes, headers=agent.headers)).json()) == 3
    after = await get(client, agent, mine["id"])
    assert (after["title"], after["version"]) == ("Mail is down", mine["version"])


async def test_an_auditor_reads_everything_and_writes_nothing(
    client: httpx.AsyncClient, actor: Any, agent: Actor
) -> None:
    auditor = actor("auditor")
    category = unique()
    incident = await create(client, agent, category=category)
    note = await client.post(
        f"{API}/{incident['id']}/notes", headers=agent.headers, json={"body": "internal", "visibility": "internal"}
    )
    assert note.status_code == 201
    assert (await get(client, auditor, incident["id"]))["id"] == incident["id"]
    assert await listed(client, auditor, category=category) == [incident["id"]]
    notes = (await client.get(f"{API}/{incident['id']}/notes", headers=auditor.headers)).json()
    assert [n["visibility"] for n in notes] == ["internal"]
    assert (await client.get(f"{API}/{incident['id']}/history", headers=auditor.headers)).status_code == 200

    assert_problem(await client.post(API, headers=auditor.headers, json={"title": "x", "category": category}), 403)
    assert_problem(await client.patch(f"{API}/{incident['id']}", headers=auditor.headers, json={"title": "x"}), 403)
    for visibility in ("public", "internal"):
        refused = await client.post(
            f"{API}/{incident['id']}/notes", headers=auditor.headers, json={"body": "x", "visibility": visibility}
        )
        assert_problem(refused, 403)
    assert_problem(await client.delete(f"{API}/{incident['id']}", headers=auditor.headers), 403)
    assert await listed(client, agent, category=category) == [incident["id"]]
    assert (await get(client, agent, incident["id"]))["version"] == 1
    assert len((await client.get(f"{API}/{incident['id']}/notes", headers=agent.headers)).json()) == 1


async def test_only_an_admin_soft_deletes(
    client: httpx.AsyncClient, app: FastAPI, agent: Actor, admin: Actor, probe: EventProbe
) -> None:
    category = unique()
    incident = await create(client, agent, category=category)
    assert_problem(await client.delete(f"{API}/{incident['id']}", headers=agent.headers), 403)
    assert (await get(client, agent, incident["id"]))["version"] == 1
    cid = unique("delete")
    deleted = await client.delete(f"{API}/{incident['id']}", headers=with_cid(admin, cid))
    assert deleted.status_code == 204 and deleted.content == b""
    for who in (agent, admin):
        assert_problem(await client.get(f"{API}/{incident['id']}", headers=who.headers), 404)
        assert_problem(await client.get(f"{API}/{incident['number']}", headers=who.headers), 404)
        assert await listed(client, who, category=category) == []
    assert_problem(await client.patch(f"{API}/{incident['id']}", headers=agent.headers, json={"title": "x"}), 404)
    assert_problem(await client.delete(f"{API}/{incident['id']}", headers=admin.headers), 404)
    async with app.state.sessions() as session:
        rows = (
            await session.exec(select(IncidentHistory).where(IncidentHistory.incident_id == uuid.UUID(incident["id"])))
        ).all()
    assert [(h.field, h.old, h.actor_id) for h in rows] == [("deleted_at", None, str(admin.id))]
    event = await probe.one(incident["id"], "deleted", sequence=2)
    assert event["actorid"] == str(admin.id) and event["correlationid"] == cid
    assert event["data"]["id"] == incident["id"]


# ---------------------------------------------------------------- bodies


READ_ONLY = {
    "id": str(uuid.uuid4()),
    "number": "INC9999999",
    "priority": 1,
    "created_at": "2020-01-01T00:00:00+00:00",
    "updated_at": "2020-01-01T00:00:00+00:00",
    "resolved_at": "2020-01-01T00:00:00+00:00",
    "closed_at": "2020-01-01T00:00:00+00:00",
    "sla": {"response_due": "2020-01-01T00:00:00+00:00"},
    "version": 42,
    "reopen_count": 3,
    "problem_id": str(uuid.uuid4()),
    "created_by": str(uuid.uuid4()),
    "sla_breached": True,
    "no_such_field": "x",
}


@pytest.mark.parametrize("field", sorted(READ_ONLY))
async def test_server_owned_fields_in_a_create_are_422(client: httpx.AsyncClient, agent: Actor, field: str) -> None:
    category = unique()
    body = {"title": "read-only probe", "category": category, field: READ_ONLY[field]}
    assert_problem(await client.post(API, headers=agent.headers, json=body), 422)
    assert await listed(client, agent, category=category) == []


@pytest.mark.parametrize("field", sorted(READ_ONLY))
async def test_server_owned_fields_in_a_patch_are_422(client: httpx.AsyncClient, agent: Actor, field: str) -> None:
    incident = await create(client, agent)
    body = {"title": "overwritten?", field: READ_ONLY[field]}
    assert_problem(await client.patch(f"{API}/{incident['id']}", headers=agent.headers, json=body), 422)
    after = await get(client, agent, incident["id"])
    assert {k: after[k] for k in ("title", "version", "priority", "number")} == {
        k: incident[k] for k in ("title", "version", "priority", "number")
    }
    assert await history(client, agent, incident["id"]) == []


async def test_etag_and_if_match(client: httpx.AsyncClient, agent: Actor, admin: Actor) -> None:
    incident = await create(client, agent)
    url = f"{API}/{incident['id']}"
    first = await client.get(url, headers=agent.headers)
    assert first.headers["ETag"] == '"1"'
    stale = await client.patch(url, headers={**agent.headers, "If-Match": '"0"'}, json={"title": "stale"})
    assert_problem(stale, 412)
    assert (await get(client, agent, incident["id"]))["title"] == "Mail is down"
    assert await history(client, agent, incident["id"]) == []
    fresh = await client.patch(url, headers={**agent.headers, "If-Match": first.headers["ETag"]}, json={"title": "ok"})
    assert fresh.status_code == 200 and fresh.headers["ETag"] == '"2"' and fresh.json()["version"] == 2
    assert (await client.get(url, headers=agent.headers)).headers["ETag"] == '"2"'
    again = await client.patch(url, headers={**agent.headers, "If-Match": first.headers["ETag"]}, json={"title": "no"})
    assert_problem(again, 412)
    any_version = await client.patch(url, headers={**agent.headers, "If-Match": "*"}, json={"title": "any"})
    assert any_version.status_code == 200 and any_version.headers["ETag"] == '"3"'
    assert_problem(await client.delete(url, headers={**admin.headers, "If-Match": '"2"'}), 412)
    assert (await get(client, agent, incident["id"]))["version"] == 3


async def test_idempotency_key_on_create(client: httpx.AsyncClient, agent: Actor, actor: Any) -> None:
    category = unique()
    key = uuid.uuid4().hex
    body = {"title": "Printer on fire", "category": category, "impact": 1, "urgency": 2}
    headers = {**agent.headers, "Idempotency-Key": key}
    first = await client.post(API, headers=headers, json=body)
    assert first.status_code == 201
    second = await client.post(API, headers=headers, json=body)
    assert second.status_code == 201 and second.json() == first.json()
    assert await listed(client, agent, category=category) == [first.json()["id"]]
    changed = await client.post(API, headers=headers, json={**body, "title": "Printer on fire (2)"})
    assert_problem(changed, 422)
    assert await listed(client, agent, category=category) == [first.json()["id"]]
    someone_else = actor("agent")
    theirs = await client.post(API, headers={**someone_else.headers, "Idempotency-Key": key}, json=body)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


async def test_a_parent_cycle_is_422(client: httpx.AsyncClient, agent: Actor) -> None:
    a = await create(client, agent)
    b = await create(client, agent, parent_id=a["id"])
    for parent in (a, b):
        refused = await client.patch(f"{API}/{a['id']}", headers=agent.headers, json={"parent_id": parent["id"]})
        assert ["body", "parent_id"] in [e["loc"] for e in assert_problem(refused, 422)["errors"]]
    unknown = await client.post(API, headers=agent.headers, json={"title": "orphan", "parent_id": str(uuid.uuid4())})
    assert_problem(unknown, 422)
    assert (await get(client, agent, a["id"]))["parent_id"] is None


async def test_history_records_each_changed_field(client: httpx.AsyncClient, agent: Actor, actor: Any) -> None:
    incident = await create(client, agent)
    other = actor("agent")
    response = await client.patch(
        f"{API}/{incident['id']}", headers=other.headers, json={"title": "Mail is slow", "impact": 1, "urgency": 2}
    )
    assert response.status_code == 200
    rows = await history(client, agent, incident["id"])
    assert all(set(r) == {"at", "actor_id", "field", "old", "new"} for r in rows)
    assert {(r["field"], r["old"], r["new"]) for r in rows} == {
        ("title", "Mail is down", "Mail is slow"),
        ("impact", 2, 1),
        ("priority", 3, 2),
    }
    assert {r["actor_id"] for r in rows} == {str(other.id)}
    assert all(datetime.fromisoformat(r["at"]).utcoffset() is not None for r in rows)


async def test_a_caller_comment_over_http_returns_the_incident_to_work(
    client: httpx.AsyncClient, actor: Any, agent: Actor, probe: EventProbe
) -> None:
    caller = actor("requester")
    incident = await reach(client, agent, "in_progress", caller_id=str(caller.id))
    held = await patch(client, agent, incident["id"], status="on_hold", hold_reason="awaiting_caller")
    cid = unique("comment")
    comment = await client.post(
        f"{API}/{incident['id']}/notes", headers=with_cid(caller, cid), json={"body": "done", "visibility": "public"}
    )
    assert comment.status_code == 201
    after = await get(client, agent, incident["id"])
    assert (after["status"], after["hold_reason"], after["version"]) == ("in_progress", None, held["version"] + 1)
    last = {r["field"]: r for r in (await history(client, agent, incident["id"]))[-2:]}
    assert (last["status"]["old"], last["status"]["new"], last["status"]["actor_id"]) == (
        "on_hold",
        "in_progress",
        str(caller.id),
    )
    moved = await probe.one(incident["id"], "status_changed", sequence=after["version"])
    assert moved["actorid"] == str(caller.id) and moved["correlationid"] == cid
    noted = await probe.one(incident["id"], "note_added", sequence=held["version"])
    assert noted["correlationid"] == cid and noted["data"]["body"] == "done"


# ---------------------------------------------------------------- lists


async def test_each_list_filter(client: httpx.AsyncClient, app: FastAPI, agent: Actor) -> None:
    category, group = unique(), unique("group")
    assignee, caller, problem = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    a = await create(
        client,
        agent,
        category=category,
        impact=1,
        urgency=1,
        assignment_group=group,
        assignee_id=str(assignee),
        title="Printer jammed on floor 3",
    )
    b = await create(
        client,
        agent,
        category=category,
        impact=3,
        urgency=3,
        caller_id=str(caller),
        title="Lobby devices offline",
        description="The printers in the lobby do not answer",
    )
    c = await reach(client, agent, "in_progress", category=category)
    d = await reach(client, agent, "on_hold", category=category)
    async with transaction(app.state.sessions) as session:
        await automation.apply_problem_link(
            session, incident_id=uuid.UUID(c["id"]), problem_id=problem, sequence=1, linked=True, note=None
        )
        for incident, year in ((a, 2020), (b, 2021), (c, 2022), (d, 2023)):
            await session.execute(
                text("UPDATE incident SET created_at = make_timestamptz(:y, 6, 1, 12, 0, 0, 'UTC') WHERE id = :id"),
                {"y": year, "id": uuid.UUID(incident["id"])},
            )
        await session.execute(
            text("UPDATE incident SET sla_breached = true WHERE id = :id"), {"id": uuid.UUID(d["id"])}
        )

    async def ids(**params: Any) -> set[str]:
        found = await listed(client, agent, category=category, **params)
        assert len(found) == len(set(found))
        return set(found)

    ia, ib, ic, id_ = a["id"], b["id"], c["id"], d["id"]
    assert await ids() == {ia, ib, ic, id_}
    assert await listed(client, agent, category=unique()) == []
    assert await ids(status="new") == {ia, ib}
    assert await ids(status=["in_progress", "on_hold"]) == {ic, id_}
    assert await ids(status="in_progress,on_hold") == {ic, id_}
    assert await ids(status="closed") == set()
    assert await ids(priority=1) == {ia}
    assert await ids(priority=5) == {ib}
    assert await ids(priority=3) == {ic, id_}
    assert await ids(assignee_id=str(assignee)) == {ia}
    assert set(await listed(client, agent, assignment_group=group)) == {ia}
    assert set(await listed(client, agent, caller_id=str(caller))) == {ib}
    assert set(await listed(client, agent, problem_id=str(problem))) == {ic}
    assert await ids(created_after="2021-01-01T00:00:00Z") == {ib, ic, id_}
    assert await ids(created_before="2022-01-01T00:00:00+00:00") == {ia, ib}
    assert await ids(created_after="2020-12-31T00:00:00Z", created_before="2022-12-31T00:00:00Z") == {ib, ic}
    assert await ids(sla_breached="true") == {id_}
    assert await ids(sla_breached="false") == {ia, ib, ic}
    assert await ids(q="printers") == {ia, ib}  # stemming: "printers" finds "Printer" in a title
    assert await ids(q="printer") == {ia, ib}
    assert await ids(q="lobby answer") == {ib}  # description
    assert await ids(q="jammed") == {ia}
    assert await ids(q="keyboard") == set()
    assert await ids(status="new", priority=1, q="printer") == {ia}


SORTABLE = ("created_at", "priority", "updated_at", "number")


def _key(item: dict[str, Any], name: str) -> tuple[Any, int]:
    value = item[name]
    if name.endswith("_at"):
        value = datetime.fromisoformat(value)
    return value, uuid.UUID(item["id"]).int


async def test_sorting_and_keyset_pagination(client: httpx.AsyncClient, agent: Actor) -> None:
    category = unique()
    cells = [(2, 2), (2, 2), (1, 1), (3, 3), (2, 2), (1, 2), (3, 3)]  # priorities 3 3 1 5 3 2 5: ties on purpose
    made = [await create(client, agent, category=category, impact=i, urgency=u) for i, u in cells]
    for incident in reversed(made[::2]):  # updated_at in another order than created_at
        await patch(client, agent, incident["id"], title=f"touched {incident['number']}")
    everything = {i["id"] for i in made}
    for name in SORTABLE:
        for sort in (name, f"-{name}"):
            whole = await client.get(
                API, headers=agent.headers, params={"category": category, "sort": sort, "limit": 200}
            )
            assert whole.status_code == 200, whole.text
            items = whole.json()["items"]
            assert {i["id"] for i in items} == everything
            assert items == sorted(items, key=lambda i, n=name: _key(i, n), reverse=sort.startswith("-")), sort
            walked: list[str] = []
            pages, cursor = 0, None
            while True:
                params: dict[str, Any] = {"category": category, "sort": sort, "limit": 2}
                if cursor:
                    params["cursor"] = cursor
                page = await client.get(API, headers=agent.headers, params=params)
                assert page.status_code == 200, page.text
                assert 1 <= len(page.json()["items"]) <= 2
                walked += [i["id"] for i in page.json()["items"]]
                pages += 1
                cursor = page.json()["next_cursor"]
                if cursor is None:
                    break
                assert pages < 10, "pagination does not end"
            assert walked == [i["id"] for i in items], sort  # every row once, in order
            assert pages == 4
    exact = await client.get(API, headers=agent.headers, params={"category": category, "limit": 7})
    assert len(exact.json()["items"]) == 7 and exact.json()["next_cursor"] is None
    default = await client.get(API, headers=agent.headers, params={"category": category})
    created = [datetime.fromisoformat(i["created_at"]) for i in default.json()["items"]]
    assert created == sorted(created, reverse=True)  # newest first by default


def _cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 201},
        {"limit": "ten"},
        {"cursor": "not a cursor"},
        {"cursor": _cursor({"s": "priority", "d": False, "v": "high", "id": str(uuid.uuid4())})},
        {"cursor": _cursor({"s": "priority", "d": False, "v": 99999999, "id": str(uuid.uuid4())})},
        {"cursor": _cursor({"s": "created_at", "d": True, "v": {"t": "yesterday"}, "id": str(uuid.uuid4())})},
        {"cursor": _cursor({"s": "created_at", "d": True, "v": {"t": "2024-01-01T00:00:00+00:00"}, "id": "x"})},
        {"sort": "title"},
        {"sort": "-search"},
        {"status": "open"},
        {"status": "new,bogus"},
        {"priority": 0},
        {"priority": 6},
        {"priority": "high"},
        {"assignee_id": "bob"},
        {"caller_id": "123"},
        {"problem_id": "PRB0000001"},
        {"created_after": "yesterday"},
        {"created_before": "2024-13-01"},
        {"sla_breached": "maybe"},
        {"q": "x" * 501},
    ],
)
async def test_invalid_list_parameters_are_422(client: httpx.AsyncClient, agent: Actor, params: dict[str, Any]) -> None:
    body = assert_problem(await client.get(API, headers=agent.headers, params=params), 422)
    assert body["errors"] and all("loc" in e and "msg" in e for e in body["errors"])


async def test_a_cursor_belongs_to_its_sort_order(client: httpx.AsyncClient, agent: Actor) -> None:
    category = unique()
    for _ in range(3):
        await create(client, agent, category=category)
    page = await client.get(API, headers=agent.headers, params={"category": category, "sort": "priority", "limit": 1})
    cursor = page.json()["next_cursor"]
    assert cursor
    for sort in ("-priority", "created_at"):
        other = await client.get(
            API, headers=agent.headers, params={"category": category, "sort": sort, "cursor": cursor}
        )
        assert_problem(other, 422)


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


async def test_a_note_without_visibility_is_public_for_a_requester_and_internal_for_an_agent(
    client: httpx.AsyncClient, actor: Any, agent: Actor
) -> None:
    requester = actor("requester")
    incident = await create(client, requester)
    mine = await client.post(
        f"/api/v1/incidents/{incident['id']}/notes", headers=requester.headers, json={"body": "hi"}
    )
    assert mine.status_code == 201
    assert mine.json()["visibility"] == "public"
    theirs = await client.post(f"/api/v1/incidents/{incident['id']}/notes", headers=agent.headers, json={"body": "wip"})
    assert theirs.json()["visibility"] == "internal"


async def test_a_principal_without_an_incident_role_cannot_list(client: httpx.AsyncClient, actor: Any) -> None:
    nobody = actor()
    assert (await client.get("/api/v1/incidents", headers=nobody.headers)).status_code == 403
