"""The incident HTTP API, request bodies and writes: server-owned fields, ETag and If-Match, Idempotency-Key,
parents, field-level history."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from itsm_shared import records

from .conftest import Actor, create
from .router_support import API, assert_problem, get, history, listed, unique

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


async def test_a_plain_create_is_one_statement_and_a_keyed_one_a_transaction(
    client: httpx.AsyncClient, agent: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #10: a create with nothing before it commits in its one statement (no BEGIN/COMMIT round trips);
    with an Idempotency-Key, whose reservation comes first, the statement joins that transaction."""
    seen: list[tuple[bool, bool]] = []
    driver_connection = records.driver_connection

    async def spied(session: Any, *, sole: bool = False) -> Any:
        connection = await driver_connection(session, sole=sole)
        seen.append((sole, connection.is_in_transaction()))
        return connection

    monkeypatch.setattr(records, "driver_connection", spied)
    body = {"title": "Printer on fire", "category": unique(), "impact": 1, "urgency": 2}
    assert (await client.post(API, headers=agent.headers, json=body)).status_code == 201
    keyed = {**agent.headers, "Idempotency-Key": uuid.uuid4().hex}
    assert (await client.post(API, headers=keyed, json=body)).status_code == 201
    assert seen == [(True, False), (True, True)]
    assert len(await listed(client, agent, category=body["category"])) == 2
