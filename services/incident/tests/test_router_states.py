"""The incident HTTP API, the state model (CONTRACT §4): the transitions offered and refused, their required
fields, reopening, priority from impact and urgency, a caller's comment returning an incident to work."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from itsm_shared.testing import EventProbe

from .conftest import Actor, create
from .router_support import (
    ALLOWED,
    API,
    NEEDS,
    REQUIRED,
    RESOLUTION,
    STATUSES,
    assert_problem,
    get,
    history,
    patch,
    reach,
    unique,
    with_cid,
)

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
