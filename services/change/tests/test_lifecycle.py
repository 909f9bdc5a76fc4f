"""The state model of issue #6: each type's path through it (standard, normal, emergency), cancelling, changing
the type, and the paths every type has."""

from __future__ import annotations

import httpx
import pytest
from change import lifecycle
from change.models import ChangeType
from itsm_shared.errors import Conflict
from itsm_shared.testing import EventProbe

from .conftest import (
    CLOSE,
    LOW,
    MODERATE,
    PLANS,
    TEMPLATE,
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

# ---------------------------------------------------------------- paths per type


async def test_standard_path_is_preapproved(client: httpx.AsyncClient, agent: Actor, probe: EventProbe) -> None:
    change = await create(client, agent, type="standard", **PLANS, **window(at(1), 2, unique_ci()))
    assert change["status"] == "new" and change["approval"] == "not_required" and change["risk"] == "low"
    assert await transitions(client, agent, change) == ["cancelled", "scheduled"]
    for illegal in ("assess", "authorize", "implement", "review", "closed"):
        await expect_status(client, agent, change, illegal, 409)
    change = await move(client, agent, change, "scheduled")
    assert await transitions(client, agent, change) == ["cancelled", "implement"]
    await expect_status(client, agent, change, "closed", 409, **CLOSE)
    change = await move(client, agent, change, "implement")
    assert change["actual_start"] is not None
    assert await transitions(client, agent, change) == ["review"]
    await expect_status(client, agent, change, "cancelled", 409)
    await expect_status(client, agent, change, "closed", 409, **CLOSE)
    change = await move(client, agent, change, "review")
    assert change["actual_end"] is not None and change["actual_end"] >= change["actual_start"]
    await expect_status(client, agent, change, "closed", 422)  # close_code and close_notes
    change = await move(client, agent, change, "closed", **CLOSE)
    assert change["closed_at"] and change["close_code"] == "successful"
    assert await transitions(client, agent, change) == []
    await expect_status(client, agent, change, "review", 409)
    assert (await patch(client, agent, change, title="renamed")).status_code == 409
    events = await probe.expect(change["id"], "created", "scheduled", "implemented", "closed", *["status_changed"] * 4)
    statuses = [e["data"]["changes"]["status"] for e in events if e["type"] == "itsm.change.status_changed"]
    assert statuses == [["new", "scheduled"], ["scheduled", "implement"], ["implement", "review"], ["review", "closed"]]
    # sequence is the RFC's version, rising with each change
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(sequences) and sequences[0] == 1 and sequences[-1] == change["version"]


async def test_normal_path_through_assess_and_cab(
    client: httpx.AsyncClient,
    agent: Actor,
    cab: Actor,
    probe: EventProbe,
) -> None:
    change = await create(client, agent, risk_assessment=MODERATE, **window(at(2), 2, unique_ci()))
    assert change["risk"] == "moderate" and change["approval"] == "not_requested"
    assert await transitions(client, agent, change) == ["assess", "cancelled"]
    for illegal in ("scheduled", "authorize", "implement", "review"):
        await expect_status(client, agent, change, illegal, 409)
    missing = await expect_status(client, agent, change, "assess", 422)
    assert {e["loc"][-1] for e in missing["errors"]} == {"implementation_plan", "backout_plan", "test_plan"}
    change = await move(client, agent, change, "assess", **PLANS)
    await expect_status(client, agent, change, "scheduled", 409)
    change = await move(client, agent, change, "authorize")
    assert change["approval"] == "requested" and change["approval_round"] == 1
    assert await transitions(client, agent, change) == ["cancelled"]
    conflict = await expect_status(client, agent, change, "scheduled", 409)
    assert "approval" in conflict["detail"]
    await expect_status(client, agent, change, "new", 409)
    decided = await decide(client, cab, change, "approve", "looks safe")
    assert decided.status_code == 201, decided.text
    change = decided.json()["change"]
    assert change["status"] == "scheduled" and change["approval"] == "approved"
    change = await move(client, agent, change, "implement")
    change = await move(client, agent, change, "review")
    change = await move(client, agent, change, "closed", **CLOSE)
    await probe.expect(change["id"], "created", "approved", "scheduled", "implemented", "closed")


async def test_emergency_path_is_authorized_by_a_change_manager(
    client: httpx.AsyncClient, agent: Actor, cab: Actor, manager: Actor
) -> None:
    change = await create(client, agent, type="emergency", **window(at(3), 1, unique_ci()))
    assert change["risk"] is None  # not assessed yet
    assert await transitions(client, agent, change) == ["authorize", "cancelled"]
    await expect_status(client, agent, change, "assess", 409)
    await expect_status(client, agent, change, "scheduled", 409)
    missing = await expect_status(client, agent, change, "authorize", 422)
    assert {e["loc"][-1] for e in missing["errors"]} == {"implementation_plan", "backout_plan", "risk_assessment"}
    change = await move(
        client, agent, change, "authorize", implementation_plan="hotfix", backout_plan="revert", risk_assessment=LOW
    )
    denied = await decide(client, cab, change, "approve")
    assert denied.status_code == 403, "a CAB member does not authorise an emergency change"
    decided = await decide(client, manager, change, "approve", "go, the outage is worse")
    assert decided.status_code == 201, decided.text
    change = decided.json()["change"]
    assert change["status"] == "scheduled"
    change = await move(client, agent, change, "implement")
    await expect_status(client, agent, change, "closed", 409, **CLOSE)  # review is mandatory
    change = await move(client, agent, change, "review")
    change = await move(client, agent, change, "closed", **CLOSE)
    assert change["status"] == "closed"


@pytest.mark.parametrize("stage", ["new", "assess", "authorize", "scheduled"])
async def test_cancelled_from_any_state_before_implement(
    client: httpx.AsyncClient, agent: Actor, cab: Actor, stage: str
) -> None:
    change = await create(client, agent, **PLANS, risk_assessment=LOW, **window(at(4), 1, unique_ci()))
    for step in ("assess", "authorize"):
        if stage == change["status"]:
            break
        change = await move(client, agent, change, step)
    if stage == "scheduled":
        change = (await decide(client, cab, change, "approve")).json()["change"]
    assert change["status"] == stage
    cancelled = await move(client, agent, change, "cancelled", close_notes="no longer needed")
    assert cancelled["closed_at"] and cancelled["close_notes"] == "no longer needed"
    await expect_status(client, agent, cancelled, "new", 409)


async def test_not_cancelled_once_implementing(client: httpx.AsyncClient, agent: Actor) -> None:
    change = await create(client, agent, type="standard", **PLANS, **window(at(4, 3), 1, unique_ci()))
    change = await move(client, agent, change, "scheduled")
    change = await move(client, agent, change, "implement")
    await expect_status(client, agent, change, "cancelled", 409)


async def test_type_changes_only_while_new(client: httpx.AsyncClient, agent: Actor) -> None:
    change = await create(client, agent, **PLANS)
    response = await patch(client, agent, change, type="standard", standard_template_id=TEMPLATE["id"])
    assert response.status_code == 200 and response.json()["approval"] == "not_required"
    assert response.json()["risk"] == "low"
    change = await move(client, agent, response.json(), "cancelled")
    other = await create(client, agent, **PLANS)
    other = await move(client, agent, other, "assess")
    assert (await patch(client, agent, other, type="emergency")).status_code == 409


def test_every_type_has_a_path_to_closed_through_review() -> None:
    for change_type in ChangeType:
        reached, frontier = set(), {"new"}
        while frontier:
            state = frontier.pop()
            reached.add(state)
            frontier |= {str(s) for s in lifecycle.PATHS[change_type][state]} - reached
        assert {"closed", "cancelled", "review", "implement"} <= reached
        assert lifecycle.PATHS[change_type]["implement"] == {"review"}
        assert lifecycle.PATHS[change_type]["review"] == {"closed"}


def test_authorize_opens_to_scheduled_only_once_approved() -> None:
    normal = lifecycle.machine("normal")
    assert "scheduled" not in normal.edges("authorize", {"approval": "requested"})
    assert "scheduled" in normal.edges("authorize", {"approval": "approved"})
    with pytest.raises(Conflict, match="awaiting CAB approval"):
        normal.check("authorize", "scheduled", {"approval": "requested"})
    with pytest.raises(Conflict, match="only by a rejection"):
        normal.check("authorize", "new", {"approval": "rejected"})
    with pytest.raises(Conflict, match="a normal change cannot go from new to scheduled"):
        normal.check("new", "scheduled", {})
    assert normal.present({"risk_override": "high"}, "risk_assessment"), "an override stands in for the assessment"
