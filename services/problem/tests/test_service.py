"""Problem rules through the API: state model, RCA fields, known errors, RBAC, history, ETag, idempotency."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import httpx
import pytest

from .conftest import Actor, create

STATUSES = ["new", "assessed", "root_cause_analysis", "fix_in_progress", "resolved", "closed", "cancelled"]
ALLOWED = {
    ("new", "assessed"),
    ("assessed", "root_cause_analysis"),
    ("root_cause_analysis", "fix_in_progress"),
    ("fix_in_progress", "resolved"),
    ("resolved", "closed"),
    ("new", "cancelled"),
    ("assessed", "cancelled"),
    ("root_cause_analysis", "cancelled"),
    ("fix_in_progress", "cancelled"),
}
PATH = ["new", "assessed", "root_cause_analysis", "fix_in_progress", "resolved", "closed"]
FIELDS = {"fix_in_progress": {"root_cause": "disk full"}, "resolved": {"resolution_code": "fix_applied"}}


async def move_to(client: httpx.AsyncClient, who: Actor, problem: dict[str, Any], status: str) -> dict[str, Any]:
    if status == "cancelled":
        r = await client.patch(f"/api/v1/problems/{problem['id']}", headers=who.headers, json={"status": "cancelled"})
        assert r.status_code == 200, r.text
        return dict(r.json())
    current = problem
    for step in PATH[1 : PATH.index(status) + 1]:
        r = await client.patch(
            f"/api/v1/problems/{problem['id']}", headers=who.headers, json={"status": step, **FIELDS.get(step, {})}
        )
        assert r.status_code == 200, r.text
        current = r.json()
    return current


@pytest.mark.parametrize(("source", "target"), list(itertools.product(STATUSES, STATUSES)))
async def test_every_transition_pair(client: httpx.AsyncClient, manager: Actor, source: str, target: str) -> None:
    if source == target:
        return
    problem = await move_to(client, manager, await create(client, manager), source)
    response = await client.patch(
        f"/api/v1/problems/{problem['id']}",
        headers=manager.headers,
        json={"status": target, **FIELDS.get(target, {}), "root_cause": "disk full"}
        if source not in ("closed", "cancelled")
        else {"status": target},
    )
    after = (await client.get(f"/api/v1/problems/{problem['id']}", headers=manager.headers)).json()
    if (source, target) in ALLOWED:
        assert response.status_code == 200, response.text
        assert after["status"] == target
    else:
        assert response.status_code == 409, (source, target, response.text)
        assert after["status"] == source
        assert after["version"] == problem["version"]


async def test_transitions_endpoint_and_required_fields(
    client: httpx.AsyncClient, manager: Actor, agent: Actor
) -> None:
    problem = await move_to(client, manager, await create(client, manager), "root_cause_analysis")
    listed = (await client.get(f"/api/v1/problems/{problem['id']}/transitions", headers=manager.headers)).json()
    assert listed == [
        {"status": "cancelled", "required_fields": []},
        {"status": "fix_in_progress", "required_fields": ["root_cause"]},
    ]
    assert (await client.get(f"/api/v1/problems/{problem['id']}/transitions", headers=agent.headers)).json() == []
    missing = await client.patch(
        f"/api/v1/problems/{problem['id']}", headers=manager.headers, json={"status": "fix_in_progress"}
    )
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["loc"] == ["body", "root_cause"]


async def test_priority_and_history(client: httpx.AsyncClient, manager: Actor) -> None:
    problem = await create(client, manager, impact=3, urgency=3)
    assert problem["priority"] == 5
    r = await client.patch(
        f"/api/v1/problems/{problem['id']}",
        headers=manager.headers,
        json={"impact": 1, "urgency": 1, "symptoms": "bounces"},
    )
    assert r.json()["priority"] == 1
    history = (await client.get(f"/api/v1/problems/{problem['id']}/history", headers=manager.headers)).json()
    assert {(h["field"], h["old"], h["new"]) for h in history} >= {
        ("impact", 3, 1),
        ("urgency", 3, 1),
        ("priority", 5, 1),
        ("symptoms", None, "bounces"),
    }


async def test_roles(client: httpx.AsyncClient, manager: Actor, agent: Actor, actor: Any) -> None:
    problem = await create(client, agent)
    auditor, requester = actor("auditor"), actor("requester")
    assert (await client.get(f"/api/v1/problems/{problem['id']}", headers=auditor.headers)).status_code == 200
    assert (
        await client.patch(f"/api/v1/problems/{problem['id']}", headers=agent.headers, json={"title": "x"})
    ).status_code == 403
    assert (
        await client.patch(f"/api/v1/problems/{problem['id']}", headers=auditor.headers, json={"title": "x"})
    ).status_code == 403
    assert (await client.post("/api/v1/problems", headers=auditor.headers, json={"title": "x"})).status_code == 403
    assert (await client.get("/api/v1/problems", headers=requester.headers)).status_code == 403
    assert (await client.get(f"/api/v1/problems/{problem['id']}", headers=requester.headers)).status_code == 403
    assert (await client.get("/api/v1/problems")).status_code == 401


async def test_read_only_fields_etag_and_idempotency(client: httpx.AsyncClient, manager: Actor) -> None:
    bad = await client.post("/api/v1/problems", headers=manager.headers, json={"title": "x", "priority": 1})
    assert bad.status_code == 422
    problem = await create(client, manager)
    r = await client.patch(f"/api/v1/problems/{problem['id']}", headers=manager.headers, json={"number": "PRB9"})
    assert r.status_code == 422
    current = await client.get(f"/api/v1/problems/{problem['number']}", headers=manager.headers)
    stale = await client.patch(
        f"/api/v1/problems/{problem['id']}", json={"title": "new"}, headers={**manager.headers, "If-Match": '"999"'}
    )
    assert stale.status_code == 412
    ok = await client.patch(
        f"/api/v1/problems/{problem['id']}",
        json={"title": "new"},
        headers={**manager.headers, "If-Match": current.headers["etag"]},
    )
    assert ok.status_code == 200
    key = {**manager.headers, "Idempotency-Key": uuid.uuid4().hex}
    first = await client.post("/api/v1/problems", headers=key, json={"title": "once"})
    again = await client.post("/api/v1/problems", headers=key, json={"title": "once"})
    other = await client.post("/api/v1/problems", headers=key, json={"title": "twice"})
    assert first.json()["id"] == again.json()["id"]
    assert other.status_code == 422


async def test_known_error_needs_a_workaround_and_is_searchable(client: httpx.AsyncClient, manager: Actor) -> None:
    word = f"zq{uuid.uuid4().hex[:6]}"
    problem = await create(client, manager, category="email", configuration_item=f"mx-{word}")
    r = await client.patch(f"/api/v1/problems/{problem['id']}", headers=manager.headers, json={"known_error": True})
    assert r.status_code == 422
    r = await client.patch(
        f"/api/v1/problems/{problem['id']}",
        headers=manager.headers,
        json={"known_error": True, "workaround": f"restart the {word} relay", "root_cause": "queue overflows"},
    )
    assert r.status_code == 200
    assert r.json()["known_error_at"]
    found = (await client.get("/api/v1/known-errors", headers=manager.headers, params={"q": f"{word} relays"})).json()
    assert [p["id"] for p in found["items"]] == [problem["id"]]
    by_ci = (
        await client.get(
            "/api/v1/known-errors",
            headers=manager.headers,
            params={"configuration_item": f"mx-{word}", "category": "email"},
        )
    ).json()
    assert [p["id"] for p in by_ci["items"]] == [problem["id"]]
    plain = await create(client, manager, configuration_item=f"mx-{word}", category="email")
    listed = (
        await client.get("/api/v1/known-errors", headers=manager.headers, params={"configuration_item": f"mx-{word}"})
    ).json()
    assert plain["id"] not in [p["id"] for p in listed["items"]]
