"""The `sla` block of incidents and the SLA policies, through the HTTP API (real database and broker).

Policies are shared by the whole test session: each test PUTs what it needs and the `policies` fixture puts
the previous values back. Calendars here are 24x7, so expected due moments are plain sums of real time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from .conftest import Actor, create
from .sla_support import Policies, at, policies_for

P5 = {"impact": 3, "urgency": 3}
P4 = {"impact": 3, "urgency": 2}
P2 = {"impact": 1, "urgency": 2}
HOLD = {"status": "on_hold", "hold_reason": "awaiting_vendor"}


@pytest.fixture
async def policies(client: httpx.AsyncClient, admin: Actor) -> AsyncIterator[Policies]:
    async with policies_for(client, admin) as p:
        yield p


async def get(client: httpx.AsyncClient, who: Actor, incident: dict[str, Any]) -> dict[str, Any]:
    response = await client.get(f"/api/v1/incidents/{incident['id']}", headers=who.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def patch(client: httpx.AsyncClient, who: Actor, incident: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = await client.patch(f"/api/v1/incidents/{incident['id']}", headers=who.headers, json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def status_changes(client: httpx.AsyncClient, who: Actor, incident: dict[str, Any]) -> list[tuple[str, Any]]:
    history = await client.get(f"/api/v1/incidents/{incident['id']}/history", headers=who.headers)
    assert history.status_code == 200
    return [(h["new"], at(h["at"])) for h in history.json() if h["field"] == "status"]


async def note(client: httpx.AsyncClient, who: Actor, incident: dict[str, Any], visibility: str) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/incidents/{incident['id']}/notes", headers=who.headers, json={"body": "x", "visibility": visibility}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_new_incident_carries_both_clocks(client: httpx.AsyncClient, agent: Actor, policies: Policies) -> None:
    await policies.put(5, 15, 240)
    created = await create(client, agent, **P5)
    start, sla = at(created["created_at"]), created["sla"]
    assert created["priority"] == 5
    assert at(sla["response_due"]) == start + timedelta(minutes=15)
    assert at(sla["resolution_due"]) == start + timedelta(hours=4)
    assert sla["breached"] is False
    for kind, target in (("response", 900), ("resolution", 14400)):
        clock = sla[kind]
        assert clock["target_seconds"] == target and at(clock["started_at"]) == start
        assert (clock["state"], clock["paused"], clock["met"], clock["breached"]) == ("running", False, False, False)
        assert clock["stopped_at"] is None and 0 <= clock["elapsed_seconds"] < 5
    assert at(sla["response"]["due_at"]) == at(sla["response_due"])
    await asyncio.sleep(0.3)
    again = (await get(client, agent, created))["sla"]
    assert again["response_due"] == sla["response_due"] and again["resolution_due"] == sla["resolution_due"]
    assert again["resolution"]["elapsed_seconds"] >= sla["resolution"]["elapsed_seconds"] + 0.25


async def test_on_hold_pauses_resolution_and_resuming_moves_its_due(
    client: httpx.AsyncClient, agent: Actor, policies: Policies
) -> None:
    await policies.put(5, 60, 120)
    created = await create(client, agent, **P5)
    await patch(client, agent, created, status="in_progress")
    before = (await get(client, agent, created))["sla"]
    held = (await patch(client, agent, created, **HOLD))["sla"]["resolution"]
    assert held["paused"] is True and held["state"] == "paused" and held["met"] is False
    await asyncio.sleep(1.2)
    still = (await get(client, agent, created))["sla"]["resolution"]
    assert still["paused"] is True and still["elapsed_seconds"] == held["elapsed_seconds"]  # frozen on hold
    resumed = (await patch(client, agent, created, status="in_progress"))["sla"]
    assert resumed["resolution"]["paused"] is False and resumed["resolution"]["state"] == "running"
    changes = await status_changes(client, agent, created)
    assert [s for s, _ in changes] == ["in_progress", "on_hold", "in_progress"]
    hold = changes[2][1] - changes[1][1]
    assert hold >= timedelta(seconds=1.2)
    # Exactly the hold's duration, to the microsecond: the calendar is 24x7.
    assert at(resumed["resolution_due"]) - at(before["resolution_due"]) == hold
    assert resumed["response_due"] == before["response_due"]  # the response clock stopped at in_progress


async def test_response_is_met_by_the_first_move_out_of_new(
    client: httpx.AsyncClient, agent: Actor, policies: Policies
) -> None:
    await policies.put(5, 60, 120)
    created = await create(client, agent, **P5)
    moved = (await patch(client, agent, created, status="in_progress"))["sla"]
    (_, when), *_ = await status_changes(client, agent, created)
    response = moved["response"]
    assert (response["state"], response["met"], response["breached"]) == ("stopped", True, False)
    assert at(response["stopped_at"]) == when
    assert moved["response_due"] == created["sla"]["response_due"]
    assert moved["resolution"]["state"] == "running"
    # Later moves leave the response alone.
    await patch(client, agent, created, **HOLD)
    later = (await patch(client, agent, created, status="in_progress"))["sla"]["response"]
    assert later["stopped_at"] == response["stopped_at"] and later["met"] is True


async def test_response_is_met_by_an_agents_first_public_comment_only(
    client: httpx.AsyncClient, agent: Actor, actor: Any, policies: Policies
) -> None:
    await policies.put(5, 60, 120)
    caller: Actor = actor("requester")
    created = await create(client, agent, caller_id=str(caller.id), **P5)
    await note(client, caller, created, "public")  # the caller's own comment is no response
    assert (await get(client, caller, created))["sla"]["response"]["state"] == "running"
    await note(client, agent, created, "internal")  # nor is a work note the caller cannot see
    assert (await get(client, agent, created))["sla"]["response"]["state"] == "running"
    comment = await note(client, agent, created, "public")
    after = await get(client, agent, created)
    response = after["sla"]["response"]
    assert (response["state"], response["met"]) == ("stopped", True)
    assert at(response["stopped_at"]) == at(comment["created_at"])
    assert after["status"] == "new" and after["sla"]["resolution"]["state"] == "running"
    await note(client, actor("agent"), created, "public")  # a second comment changes nothing
    assert (await get(client, agent, created))["sla"]["response"]["stopped_at"] == response["stopped_at"]


async def test_priority_change_retargets_from_the_original_start(
    client: httpx.AsyncClient, agent: Actor, policies: Policies
) -> None:
    await policies.put(5, 60, 120)
    await policies.put(4, 30, 60)
    created = await create(client, agent, **P5)
    start = at(created["created_at"])
    await asyncio.sleep(0.5)
    changed = await patch(client, agent, created, urgency=P4["urgency"])
    assert changed["priority"] == 4
    sla = changed["sla"]
    # From the creation, not from the change half a second later.
    assert at(sla["response_due"]) == start + timedelta(minutes=30)
    assert at(sla["resolution_due"]) == start + timedelta(minutes=60)
    assert sla["response"]["target_seconds"] == 1800 and sla["resolution"]["target_seconds"] == 3600


async def test_priority_change_to_a_target_already_exceeded_breaches_at_once(
    client: httpx.AsyncClient, agent: Actor, policies: Policies
) -> None:
    await policies.put(5, 60, 120)
    await policies.put(2, 0.01, 0.02)  # 0.6 s and 1.2 s
    created = await create(client, agent, **P5)
    start = at(created["created_at"])
    await asyncio.sleep(1.4)
    sla = (await patch(client, agent, created, **P2))["sla"]
    # Both targets ran out before the change: their due moments are in the past, the clocks breached.
    assert at(sla["response_due"]) == start + timedelta(seconds=0.6)
    assert at(sla["resolution_due"]) == start + timedelta(seconds=1.2)
    assert sla["breached"] and sla["response"]["breached"] and sla["resolution"]["breached"]
    # The scheduler fires at once: the incident shows up under sla_breached.
    for _ in range(40):
        listed = await client.get("/api/v1/incidents?sla_breached=true&priority=2&limit=200", headers=agent.headers)
        if created["id"] in [i["id"] for i in listed.json()["items"]]:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the retargeted incident never showed up as sla_breached")


async def test_put_sla_policies_is_admin_only(
    client: httpx.AsyncClient, admin: Actor, agent: Actor, actor: Any, policies: Policies
) -> None:
    body = {"name": "P5 fast", "response_minutes": 0.05, "resolution_minutes": 0.1, "calendar": {"kind": "24x7"}}
    for who in (agent, actor("requester"), actor("auditor")):
        refused = await client.put("/api/v1/sla-policies/5", headers=who.headers, json=body)
        assert refused.status_code == 403, refused.text
    assert (await client.put("/api/v1/sla-policies/5", json=body)).status_code == 401
    before = policies.saved[5]
    put = await client.put("/api/v1/sla-policies/5", headers=admin.headers, json=body)
    assert put.status_code == 200, put.text
    saved = put.json()
    assert (saved["response_minutes"], saved["resolution_minutes"]) == (0.05, 0.1)  # fractions allowed
    assert saved["calendar"]["kind"] == "24x7" and saved["version"] == before["version"] + 1
    listed = await client.get("/api/v1/sla-policies", headers=agent.headers)  # everyone reads
    assert listed.status_code == 200
    assert [p["priority"] for p in listed.json()] == [1, 2, 3, 4, 5]
    assert next(p for p in listed.json() if p["priority"] == 5)["response_minutes"] == 0.05
    berlin = {
        "kind": "business_hours",
        "timezone": "Europe/Berlin",
        "weekdays": [0, 1, 2, 3, 4],
        "start": "08:30",
        "end": "17:00",
        "holidays": ["2026-12-25"],
    }
    put = await client.put("/api/v1/sla-policies/5", headers=admin.headers, json={**body, "calendar": berlin})
    assert put.status_code == 200, put.text
    assert put.json()["calendar"] == berlin
    # There are five priorities, and the document says so: another is refused as input, not looked for.
    assert (await client.put("/api/v1/sla-policies/9", headers=admin.headers, json=body)).status_code == 422


@pytest.mark.parametrize(
    "calendar",
    [
        {"kind": "weekly"},
        {"kind": "business_hours", "timezone": "Mars/Olympus_Mons"},
        {"kind": "business_hours", "start": "17:00", "end": "08:00"},
        {"kind": "business_hours", "start": "09:00", "end": "09:00"},
        {"kind": "business_hours", "start": "25:00"},
        {"kind": "business_hours", "weekdays": [7]},
        {"kind": "business_hours", "weekdays": []},
        {"kind": "business_hours", "holidays": ["2026-02-30"]},
        {"kind": "business_hours", "holidays": ["next friday"]},
        {"kind": "business_hours", "lunch": "12:00"},
        {"timezone": "UTC"},
    ],
)
async def test_invalid_calendars_are_422(
    client: httpx.AsyncClient, admin: Actor, policies: Policies, calendar: dict[str, Any]
) -> None:
    body = {"name": "bad", "response_minutes": 60, "resolution_minutes": 120, "calendar": calendar}
    refused = await client.put("/api/v1/sla-policies/5", headers=admin.headers, json=body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["errors"]
    listed = await client.get("/api/v1/sla-policies", headers=admin.headers)
    assert next(p for p in listed.json() if p["priority"] == 5) == policies.saved[5]  # unchanged


@pytest.mark.parametrize(
    "targets",
    [
        {"response_minutes": 0, "resolution_minutes": 60},
        {"response_minutes": -1, "resolution_minutes": 60},
        {"response_minutes": 120, "resolution_minutes": 60},  # response after resolution
        {"response_minutes": "soon", "resolution_minutes": 60},
    ],
)
async def test_invalid_targets_are_422(
    client: httpx.AsyncClient, admin: Actor, policies: Policies, targets: dict[str, Any]
) -> None:
    body = {"name": "bad", "calendar": {"kind": "24x7"}, **targets}
    refused = await client.put("/api/v1/sla-policies/5", headers=admin.headers, json=body)
    assert refused.status_code == 422, refused.text
