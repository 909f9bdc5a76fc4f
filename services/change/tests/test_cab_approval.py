"""CAB approval (issue #6): the approvals each risk needs, from whom, rejections, and an approved change that waits
in authorize for a window or a conflict to clear."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from itsm_shared.testing import EventProbe

from .conftest import (
    HIGH,
    LOW,
    MODERATE,
    PLANS,
    Actor,
    at,
    create,
    decide,
    expect_status,
    move,
    patch,
    transitions,
    unique_ci,
    window,
)

# ---------------------------------------------------------------- CAB approval


async def authorize(client: httpx.AsyncClient, who: Actor, assessment: dict[str, str], **fields: Any) -> dict[str, Any]:
    change = await create(client, who, **PLANS, risk_assessment=assessment, **fields)
    change = await move(client, who, change, "assess")
    return await move(client, who, change, "authorize")


@pytest.mark.parametrize("assessment", [LOW, MODERATE], ids=["low", "moderate"])
async def test_low_and_moderate_risk_need_one_approval(
    client: httpx.AsyncClient, agent: Actor, cab: Actor, assessment: dict[str, str]
) -> None:
    change = await authorize(client, agent, assessment, **window(at(5), 1, unique_ci()))
    decided = await decide(client, cab, change, "approve")
    assert decided.status_code == 201, decided.text
    body = decided.json()
    assert body["decision"] == "approve" and body["approver_id"] == str(cab.id) and body["round"] == 1
    assert body["change"]["approval"] == "approved" and body["change"]["status"] == "scheduled"


async def test_high_risk_needs_two_approvals_from_different_people(
    client: httpx.AsyncClient,
    agent: Actor,
    cab: Actor,
    cab2: Actor,
    probe: EventProbe,
) -> None:
    change = await authorize(client, agent, HIGH, **window(at(5, 3), 1, unique_ci()))
    first = await decide(client, cab, change, "approve", "fine by networks")
    assert first.status_code == 201
    assert first.json()["change"]["status"] == "authorize"
    assert first.json()["change"]["approval"] == "requested"
    again = await decide(client, cab, change, "approve", "still fine")
    assert again.status_code == 409, "the same person cannot make up the quorum"
    second = await decide(client, cab2, change, "approve", "fine by storage")
    assert second.status_code == 201
    assert second.json()["change"]["status"] == "scheduled"
    late = await decide(client, cab2, change, "reject", "too late")
    assert late.status_code == 409
    events = await probe.expect(change["id"], "approved", "approved", "scheduled")
    approvals = [e["data"]["approval_decision"] for e in events if e["type"] == "itsm.change.approved"]
    assert [(a["approvals"], a["required"], a["quorum_reached"]) for a in approvals] == [(1, 2, False), (2, 2, True)]
    assert [a["comment"] for a in approvals] == ["fine by networks", "fine by storage"]
    assert [a["approver_id"] for a in approvals] == [str(cab.id), str(cab2.id)]
    listed = (await client.get(f"/api/v1/changes/{change['id']}/approvals", headers=agent.headers)).json()
    assert [(a["approver_id"], a["decision"], a["comment"]) for a in listed] == [
        (str(cab.id), "approve", "fine by networks"),
        (str(cab2.id), "approve", "fine by storage"),
    ]


async def test_nobody_approves_their_own_change(client: httpx.AsyncClient, actor: Any, cab: Actor) -> None:
    requester = actor("agent", "cab_member")
    change = await authorize(client, requester, LOW)
    own = await decide(client, requester, change, "approve")
    assert own.status_code == 403
    assert "own" in own.json()["detail"]
    assert (await decide(client, requester, change, "reject", "no")).status_code == 403
    assignee = actor("cab_member")
    other = await authorize(client, actor("agent"), LOW, assignee_id=str(assignee.id))
    assert (await decide(client, assignee, other, "approve")).status_code == 403
    assert (await decide(client, cab, other, "approve")).status_code == 201


async def test_only_cab_members_decide_normal_changes(
    client: httpx.AsyncClient, agent: Actor, manager: Actor, actor: Any
) -> None:
    change = await authorize(client, agent, LOW)
    for roles in (("agent",), ("admin",), ("change_manager",), ("auditor",)):
        assert (await decide(client, actor(*roles), change, "approve")).status_code == 403, roles
    not_open = await create(client, agent, **PLANS)
    assert (await decide(client, actor("cab_member"), not_open, "approve")).status_code == 409


async def test_one_rejection_returns_the_change_to_new(
    client: httpx.AsyncClient,
    agent: Actor,
    cab: Actor,
    cab2: Actor,
    actor: Any,
    probe: EventProbe,
) -> None:
    change = await authorize(client, agent, HIGH)
    assert (await decide(client, cab, change, "approve", "ok")).status_code == 201
    no_comment = await decide(client, cab2, change, "reject", None)
    assert no_comment.status_code == 422, "a rejection says why"
    rejected = await decide(client, cab2, change, "reject", "no backout for the schema migration")
    assert rejected.status_code == 201
    change = rejected.json()["change"]
    assert change["status"] == "new" and change["approval"] == "rejected"
    events = await probe.expect(change["id"], "rejected")
    event = next(e for e in events if e["type"] == "itsm.change.rejected")
    assert event["data"]["approval_decision"]["comment"] == "no backout for the schema migration"
    assert event["data"]["status"] == "new" and event["actorid"] == str(cab2.id)
    # back through assess and authorize: a new round, the old approval no longer counts
    change = await move(client, agent, change, "assess")
    change = await move(client, agent, change, "authorize")
    assert change["approval_round"] == 2 and change["approval"] == "requested"
    first = await decide(client, cab, change, "approve", "ok again")
    assert first.status_code == 201 and first.json()["change"]["approval"] == "requested"
    second = await decide(client, actor("cab_member"), change, "approve", "ok")
    assert second.json()["change"]["approval"] == "approved"
    history = (await client.get(f"/api/v1/changes/{change['id']}/history", headers=agent.headers)).json()
    decisions = [h["new"] for h in history if h["field"] == "approval_decision"]
    assert [(d["round"], d["decision"], d["comment"]) for d in decisions] == [
        (1, "approve", "ok"),
        (1, "reject", "no backout for the schema migration"),
        (2, "approve", "ok again"),
        (2, "approve", "ok"),
    ]


async def test_approved_without_a_window_waits_in_authorize(
    client: httpx.AsyncClient, agent: Actor, cab: Actor
) -> None:
    change = await authorize(client, agent, LOW)
    change = (await decide(client, cab, change, "approve")).json()["change"]
    assert change["status"] == "authorize" and change["approval"] == "approved"
    assert await transitions(client, agent, change) == ["cancelled", "scheduled"]
    missing = await expect_status(client, agent, change, "scheduled", 422)
    assert {e["loc"][-1] for e in missing["errors"]} == {"planned_start", "planned_end", "configuration_items"}
    scheduled = await move(client, agent, change, "scheduled", **window(at(6), 2, unique_ci()))
    assert scheduled["status"] == "scheduled"


async def test_approved_into_a_conflict_waits_in_authorize(client: httpx.AsyncClient, agent: Actor, cab: Actor) -> None:
    ci = unique_ci()
    blocker = await create(client, agent, type="standard", **PLANS, **window(at(6, 4), 2, ci))
    await move(client, agent, blocker, "scheduled")
    change = await authorize(client, agent, LOW, **window(at(6, 5), 2, ci))
    change = (await decide(client, cab, change, "approve")).json()["change"]
    assert change["status"] == "authorize" and change["approval"] == "approved"
    refused = await expect_status(client, agent, change, "scheduled", 409)
    assert [c["change_id"] for c in refused["conflicts"]] == [blocker["id"]]
    # the CAB approved that window: another one is a new round (re-approval), decided again
    moved = (await patch(client, agent, change, **window(at(6, 6), 2, ci))).json()
    assert (moved["status"], moved["approval"], moved["approval_round"]) == ("authorize", "requested", 2)
    again = (await decide(client, cab, moved, "approve")).json()["change"]
    assert again["status"] == "scheduled"
