"""The incident HTTP API, who may do what (CONTRACT §3): authentication, the requester, the auditor, the admin's
soft delete, notes by role. Against the in-process app, its own database and the real broker."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from incident.models import IncidentHistory
from itsm_shared.testing import EventProbe, TestIssuer
from sqlmodel import select

from .conftest import Actor, create
from .router_support import API, assert_problem, get, listed, unique, with_cid

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
