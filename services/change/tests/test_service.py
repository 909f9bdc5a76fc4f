"""The rules of issue #6: each type's path through the state model, risk, CAB approval, history and events."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from change import lifecycle, risk
from change.models import ChangeType, Risk
from itsm_shared.errors import Conflict
from itsm_shared.testing import EventProbe

from .conftest import HIGH, LOW, MODERATE, PLANS, TEMPLATE, Actor, at, create, decide, move, patch, unique_ci, window

CLOSE = {"close_code": "successful", "close_notes": "done, monitored for an hour"}


async def transitions(client: httpx.AsyncClient, who: Actor, change: dict[str, Any]) -> list[str]:
    response = await client.get(f"/api/v1/changes/{change['id']}/transitions", headers=who.headers)
    assert response.status_code == 200, response.text
    return [t["status"] for t in response.json()]


async def expect_status(
    client: httpx.AsyncClient, who: Actor, change: dict[str, Any], status: str, code: int, **fields: Any
) -> dict[str, Any]:
    response = await patch(client, who, change, status=status, **fields)
    assert response.status_code == code, (status, response.text)
    return dict(response.json())


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


# ---------------------------------------------------------------- risk


def assess(**answers: str) -> risk.Result:
    return risk.assess({**LOW, **answers})


def test_risk_from_the_weighted_score() -> None:
    low = assess()
    assert low.risk == Risk.LOW and low.score == 10 and low.rules == ()
    # 5 + 15 + 0 + 10 + 0 + 5 + 0 = 35: moderate by score alone
    moderate = assess(business_impact="low", affected_users="many", tested="partially", experience="done_before")
    assert moderate.score == 35 and moderate.score_risk == Risk.MODERATE and moderate.rules == ()
    assert moderate.risk == Risk.MODERATE
    # 15 + 15 + 0 + 10 + 15 + 5 + 10 = 70: high by score alone
    high = assess(
        business_impact="medium",
        affected_users="many",
        tested="partially",
        backout="complex",
        experience="done_before",
        business_hours="yes",
    )
    assert high.score == 70 and high.rules == () and high.risk == Risk.HIGH


def test_the_highest_risk_rule_wins() -> None:
    no_backout = assess(backout="not_possible")
    assert no_backout.score == 40 and no_backout.score_risk == Risk.MODERATE
    assert no_backout.risk == Risk.HIGH and no_backout.rules == ("no_backout",)
    untested = assess(tested="not_tested", business_impact="none", affected_users="none")
    assert untested.score == 25 and untested.risk == Risk.MODERATE
    first = assess(experience="first_time", business_impact="none", affected_users="none")
    assert first.score_risk == Risk.LOW and first.risk == Risk.MODERATE and first.rules == ("first_time",)
    both = assess(business_impact="high", tested="partially", outage_required="yes")
    assert both.risk == Risk.HIGH and set(both.rules) == {"untested_high_impact", "outage"}
    everyone = assess(outage_required="yes", affected_users="all")
    assert everyone.risk == Risk.HIGH and "outage_for_everyone" in everyone.rules


def test_questionnaire_documents_every_question_and_weight() -> None:
    doc = risk.questionnaire()
    assert {q["name"] for q in doc["questions"]} == set(risk.RiskAssessment.model_fields)
    for question in doc["questions"]:
        answers = {a["value"]: a["weight"] for a in question["answers"]}
        assert answers == dict(risk.QUESTIONS[question["name"]][1])
    assert [b["risk"] for b in doc["bands"]] == ["high", "moderate", "low"]


async def test_risk_is_computed_and_recomputed_from_the_questionnaire(client: httpx.AsyncClient, agent: Actor) -> None:
    change = await create(client, agent, risk_assessment=LOW)
    assert change["risk"] == change["computed_risk"] == "low"
    assert change["risk_details"] == {"score": 10, "score_risk": "low", "rules": []}
    updated = (await patch(client, agent, change, risk_assessment=HIGH)).json()
    assert updated["risk"] == "high" and updated["risk_details"]["rules"] == ["no_backout"]
    incomplete = await patch(client, agent, change, risk_assessment={"tested": "fully"})
    assert incomplete.status_code == 422
    wrong = await patch(client, agent, change, risk_assessment={**LOW, "tested": "maybe"})
    assert wrong.status_code == 422
    sent = await patch(client, agent, change, risk="low")
    assert sent.status_code == 422, "risk is the server's"


async def test_only_a_change_manager_overrides_risk_with_a_reason(
    client: httpx.AsyncClient, agent: Actor, manager: Actor, cab: Actor
) -> None:
    change = await create(client, agent, **PLANS, risk_assessment=HIGH)
    forbidden = await patch(client, agent, change, risk_override="low", risk_override_reason="trust me")
    assert forbidden.status_code == 403
    forbidden = await patch(client, cab, change, risk_override="low", risk_override_reason="trust me")
    assert forbidden.status_code == 403
    no_reason = await patch(client, manager, change, risk_override="low")
    assert no_reason.status_code == 422
    overridden = await patch(
        client, manager, change, risk_override="moderate", risk_override_reason="the backout is a DNS flip"
    )
    assert overridden.status_code == 200, overridden.text
    body = overridden.json()
    assert body["risk"] == "moderate" and body["computed_risk"] == "high"
    assert body["risk_override_reason"] == "the backout is a DNS flip"
    history = (await client.get(f"/api/v1/changes/{change['id']}/history", headers=agent.headers)).json()
    by_field = {h["field"]: h for h in history}
    assert by_field["risk"]["old"] == "high" and by_field["risk"]["new"] == "moderate"
    assert by_field["risk_override"]["new"] == "moderate"
    assert by_field["risk_override_reason"]["new"] == "the backout is a DNS flip"
    assert by_field["risk_override"]["actor_id"] == str(manager.id)
    cleared = (await patch(client, manager, change, risk_override=None)).json()
    assert cleared["risk"] == "high" and cleared["risk_override"] is None and cleared["risk_override_reason"] is None
    # settled once authorization opens
    change = await move(client, agent, cleared, "assess")
    change = await move(client, agent, change, "authorize")
    frozen = await patch(client, manager, change, risk_override="low", risk_override_reason="late")
    assert frozen.status_code == 409
    assert (await patch(client, agent, change, risk_assessment=LOW)).status_code == 409


async def test_an_override_stands_in_for_the_questionnaire(
    client: httpx.AsyncClient, agent: Actor, manager: Actor
) -> None:
    change = await create(client, agent, type="emergency", implementation_plan="x", backout_plan="y")
    await expect_status(client, agent, change, "authorize", 422)
    change = (await patch(client, manager, change, risk_override="high", risk_override_reason="payments")).json()
    change = await move(client, agent, change, "authorize")
    assert change["risk"] == "high" and change["computed_risk"] is None


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


# ---------------------------------------------------------------- history and events


async def test_field_level_history_and_update_events(
    client: httpx.AsyncClient, agent: Actor, probe: EventProbe
) -> None:
    change = await create(client, agent, title="Old title")
    ci = unique_ci()
    updated = await patch(client, agent, change, title="New title", configuration_items=[ci, ci, " x "])
    assert updated.status_code == 200
    assert updated.json()["configuration_items"] == [ci, "x"] and updated.json()["version"] == 2
    same = await patch(client, agent, updated.json(), title="New title")
    assert same.json()["version"] == 2, "a PATCH that changes nothing is no new version"
    events = await probe.expect(change["id"], "created", "updated")
    update = next(e for e in events if e["type"] == "itsm.change.updated")
    assert update["data"]["changes"] == {"title": ["Old title", "New title"], "configuration_items": [[], [ci, "x"]]}
    assert update["sequence"] == 2 and update["actorid"] == str(agent.id) and update["source"] == "/itsm/change"
    assert probe.message_of(update).message_id == update["id"]
    assert probe.message_of(update).routing_key == "change.updated"
    history = (await client.get(f"/api/v1/changes/{change['id']}/history", headers=agent.headers)).json()
    assert [(h["field"], h["old"], h["new"]) for h in history] == [
        ("title", "Old title", "New title"),
        ("configuration_items", [], [ci, "x"]),
    ]
    assert all(h["actor_id"] == str(agent.id) for h in history)
