"""CAB approval cannot be bypassed or voided (issue #11, point 9): a writer cannot make an RFC standard (pre-approved)
by declaring it, a standard change follows an approved template of the catalogue change managers keep, and
changing what the CAB approved reopens approval (ServiceNow's re-approval)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from itsm_shared.testing import EventProbe, Listen

from .conftest import HIGH, LOW, PLANS, Actor, at, create, decide, move, patch, unique_ci, window

TEMPLATES = "/api/v1/changes/standard-templates"


async def new_template(client: httpx.AsyncClient, manager: Actor, **fields: Any) -> dict[str, Any]:
    body = {"name": "Rotate a TLS certificate", **PLANS, **fields}
    response = await client.post(TEMPLATES, headers=manager.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def raise_change(client: httpx.AsyncClient, who: Actor, **fields: Any) -> httpx.Response:
    return await client.post("/api/v1/changes", headers=who.headers, json={"title": "Rotate certificates", **fields})


# ---------------------------------------------------------------- attack 1: declaring a change standard


async def test_a_writer_cannot_declare_a_high_risk_change_standard(
    client: httpx.AsyncClient, agent: Actor, manager: Actor
) -> None:
    """The attack: `type: standard` on a high-risk RFC made it pre-approved, with no CAB."""
    attack = await raise_change(
        client, agent, type="standard", standard_template_id=None, risk_assessment=HIGH, **PLANS, **window(at(90), 2)
    )
    assert attack.status_code == 403, attack.text
    assert "template" in attack.json()["detail"]
    undeclared = await raise_change(client, agent, type="standard", standard_template_id=None, **PLANS)
    assert undeclared.status_code == 403
    # ... nor by turning a normal RFC into a standard one
    normal = await create(client, agent, risk_assessment=HIGH, **PLANS)
    assert (await patch(client, agent, normal, type="standard")).status_code == 403
    # a template does not make a high-risk change standard, and neither does a change manager
    template = await new_template(client, manager)
    risky = await raise_change(
        client, agent, type="standard", standard_template_id=template["id"], risk_assessment=HIGH
    )
    assert risky.status_code == 422 and risky.json()["errors"][0]["loc"] == ["body", "risk_assessment"]
    by_manager = await raise_change(client, manager, type="standard", risk_assessment=HIGH, **PLANS)
    assert by_manager.status_code == 422
    assert (await patch(client, manager, normal, type="standard")).status_code == 422, "still high risk"


async def test_a_change_manager_raises_a_standard_change_without_a_template(
    client: httpx.AsyncClient, agent: Actor, manager: Actor
) -> None:
    change = await create(client, manager, type="standard", standard_template_id=None, **PLANS)
    assert change["approval"] == "not_required" and change["standard_template_id"] is None
    # the plans the manager answers for are the manager's to change
    assert (await patch(client, agent, change, implementation_plan="something else")).status_code == 403
    assert (await patch(client, agent, change, title="renamed")).status_code == 200
    changed = await patch(client, manager, change, implementation_plan="apply the patch, then reboot")
    assert changed.status_code == 200, changed.text


async def test_a_standard_change_follows_its_template(client: httpx.AsyncClient, agent: Actor, manager: Actor) -> None:
    ci, other = unique_ci(), unique_ci()
    template = await new_template(client, manager, configuration_items=[ci, other], test_plan="check the chain")
    fields = {"type": "standard", "standard_template_id": template["id"]}
    change = await create(client, agent, **fields, **window(at(91), 1, ci))
    assert change["standard_template_id"] == template["id"] and change["approval"] == "not_required"
    assert change["risk"] == "low" and change["test_plan"] == "check the chain"
    assert (change["implementation_plan"], change["backout_plan"]) == (
        PLANS["implementation_plan"],
        PLANS["backout_plan"],
    )
    same = await raise_change(client, agent, **fields, implementation_plan=PLANS["implementation_plan"])
    assert same.status_code == 201, "sending the template's own plan is fine"
    for refused in (
        {"implementation_plan": "do it my way"},
        {"backout_plan": "there is no way back"},
        {"configuration_items": [ci, unique_ci()]},
    ):
        response = await raise_change(client, agent, **fields, **refused)
        assert response.status_code == 422, refused
        assert response.json()["errors"][0]["loc"] == ["body", next(iter(refused))]
    for refused in ({"implementation_plan": "do it my way"}, {"test_plan": None}, {"configuration_items": ["db"]}):
        assert (await patch(client, agent, change, **refused)).status_code == 422, refused
    assert (await patch(client, agent, change, configuration_items=[ci, other])).status_code == 200
    scheduled = await move(client, agent, change, "scheduled")
    assert (await patch(client, agent, scheduled, standard_template_id=None)).status_code == 409
    # a standard-change template goes with type standard; leaving the type drops it
    assert (await raise_change(client, agent, type="normal", standard_template_id=template["id"])).status_code == 422
    other_change = await create(client, agent, **fields)
    normal = await patch(client, agent, other_change, type="normal")
    assert normal.status_code == 200 and normal.json()["standard_template_id"] is None
    assert normal.json()["approval"] == "not_requested"
    # ... and adopting one later brings its plans
    adopted = await patch(client, agent, normal.json(), type="standard", standard_template_id=template["id"])
    assert adopted.status_code == 200 and adopted.json()["test_plan"] == "check the chain"


async def test_only_active_templates_of_the_catalogue(client: httpx.AsyncClient, agent: Actor, manager: Actor) -> None:
    template = await new_template(client, manager, active=False)
    inactive = await raise_change(client, agent, type="standard", standard_template_id=template["id"])
    assert inactive.status_code == 422 and "inactive" in inactive.text
    unknown = await raise_change(client, agent, type="standard", standard_template_id=str(manager.id))
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["loc"] == ["body", "standard_template_id"]


# ---------------------------------------------------------------- attack 2: changing what was approved


async def approved(client: httpx.AsyncClient, agent: Actor, cab: Actor, assessment: dict[str, str], ci: str) -> dict:
    change = await create(client, agent, **PLANS, risk_assessment=assessment, **window(at(92), 2, ci))
    change = await move(client, agent, change, "assess")
    change = await move(client, agent, change, "authorize")
    decided = await decide(client, cab, change, "approve", "fine in that window")
    assert decided.status_code == 201, decided.text
    return dict(decided.json()["change"])


@pytest.mark.parametrize(
    "edit",
    [
        {"implementation_plan": "drop the production database"},
        {"backout_plan": "none"},
        {"test_plan": "skip"},
        {"configuration_items": ["core-router"]},
        {"planned_start": "2031-04-07T23:00:00+00:00"},
        {"planned_end": "2031-04-09T02:00:00+00:00"},
    ],
    ids=lambda e: next(iter(e)),
)
async def test_changing_what_the_cab_approved_reopens_approval(
    client: httpx.AsyncClient, agent: Actor, cab: Actor, probe: EventProbe, edit: dict[str, Any]
) -> None:
    """The attack: approved for one plan, window and set of items, the RFC was then changed and implemented."""
    change = await approved(client, agent, cab, LOW, unique_ci())
    assert (change["status"], change["approval"], change["approval_round"]) == ("scheduled", "approved", 1)
    edited = await patch(client, agent, change, **edit)
    assert edited.status_code == 200, edited.text
    reopened = edited.json()
    assert (reopened["status"], reopened["approval"], reopened["approval_round"]) == ("authorize", "requested", 2)
    assert (await patch(client, agent, reopened, status="scheduled")).status_code == 409
    assert (await patch(client, agent, reopened, status="implement")).status_code == 409
    events = await probe.wait(change["id"], "updated", count=4)  # assess, authorize, the approval, the edit
    last = max(events, key=lambda e: e["sequence"])["data"]["changes"]
    assert last["status"] == ["scheduled", "authorize"] and last["approval"] == ["approved", "requested"]
    assert last["approval_round"] == [1, 2] and next(iter(edit)) in last
    again = await decide(client, cab, reopened, "approve", "fine, with the new plan")
    assert again.status_code == 201 and again.json()["round"] == 2
    assert again.json()["change"]["status"] == "scheduled"


async def test_earlier_approvals_no_longer_count(
    client: httpx.AsyncClient, agent: Actor, cab: Actor, cab2: Actor
) -> None:
    ci = unique_ci()
    change = await create(client, agent, **PLANS, risk_assessment=HIGH, **window(at(93), 2, ci))
    change = await move(client, agent, change, "assess")
    change = await move(client, agent, change, "authorize")
    await decide(client, cab, change, "approve")
    change = (await decide(client, cab2, change, "approve")).json()["change"]
    assert change["status"] == "scheduled"
    reopened = (await patch(client, agent, change, backout_plan="restore from last week's backup")).json()
    once = (await decide(client, cab, reopened, "approve")).json()["change"]
    assert (once["status"], once["approval"]) == ("authorize", "requested"), "high risk: two approvals of this round"
    twice = (await decide(client, cab2, once, "approve")).json()["change"]
    assert twice["status"] == "scheduled"
    rounds = [
        (a["round"], a["approver_id"])
        for a in (await client.get(f"/api/v1/changes/{change['id']}/approvals", headers=agent.headers)).json()
    ]
    assert rounds == [(1, str(cab.id)), (1, str(cab2.id)), (2, str(cab.id)), (2, str(cab2.id))]


async def test_what_the_cab_did_not_see_changes_nothing(client: httpx.AsyncClient, agent: Actor, cab: Actor) -> None:
    change = await approved(client, agent, cab, LOW, unique_ci())
    renamed = (
        await patch(client, agent, change, title="Patch the mail servers (Tuesday)", description="ticket 42")
    ).json()
    assert (renamed["status"], renamed["approval"], renamed["approval_round"]) == ("scheduled", "approved", 1)


async def test_once_implementing_what_was_approved_is_fixed(
    client: httpx.AsyncClient, agent: Actor, cab: Actor
) -> None:
    change = await approved(client, agent, cab, LOW, unique_ci())
    change = await move(client, agent, change, "implement")
    for edit in ({"implementation_plan": "improvise"}, {"configuration_items": ["another"]}, {"planned_end": None}):
        assert (await patch(client, agent, change, **edit)).status_code in (409, 422), edit
    assert (await patch(client, agent, change, actual_start=change["actual_start"], title="x")).status_code == 200


async def test_an_emergency_change_is_authorised_again_by_a_change_manager(
    client: httpx.AsyncClient, agent: Actor, manager: Actor, cab: Actor
) -> None:
    change = await create(
        client, agent, type="emergency", **PLANS, risk_assessment=LOW, **window(at(94), 1, unique_ci())
    )
    change = await move(client, agent, change, "authorize")
    change = (await decide(client, manager, change, "approve", "go")).json()["change"]
    assert change["status"] == "scheduled"
    reopened = (await patch(client, agent, change, configuration_items=[unique_ci()])).json()
    assert (reopened["status"], reopened["approval"]) == ("authorize", "requested")
    assert (await decide(client, cab, reopened, "approve")).status_code == 403
    assert (await decide(client, manager, reopened, "approve", "go")).json()["change"]["status"] == "scheduled"


# ---------------------------------------------------------------- the catalogue


async def test_the_catalogue_is_kept_by_change_managers(
    client: httpx.AsyncClient, agent: Actor, manager: Actor, actor: Any, listen: Listen
) -> None:
    probe = await listen("standard_change_template.#")
    body = {"name": "Restart the print spooler", "category": "windows", **PLANS, "configuration_items": ["print-01"]}
    for who in (agent, actor("admin"), actor("cab_member")):
        assert (await client.post(TEMPLATES, headers=who.headers, json=body)).status_code == 403
    for server_owned in ({"risk": "low"}, {"version": 2}, {"id": str(agent.id)}):
        assert (await client.post(TEMPLATES, headers=manager.headers, json={**body, **server_owned})).status_code == 422
    created = await client.post(TEMPLATES, headers=manager.headers, json=body)
    assert created.status_code == 201, created.text
    template = created.json()
    assert template["risk"] == "low" and template["active"] is True and created.headers["etag"] == '"1"'
    url = f"{TEMPLATES}/{template['id']}"
    assert (await client.get(url, headers=agent.headers)).json() == template
    listed = (await client.get(TEMPLATES, headers=agent.headers, params={"active": "true", "limit": 200})).json()
    assert template["id"] in [t["id"] for t in listed["items"]]
    assert (await client.patch(url, headers=agent.headers, json={"active": False})).status_code == 403
    stale = await client.patch(url, headers={**manager.headers, "If-Match": '"5"'}, json={"active": False})
    assert stale.status_code == 412
    retired = await client.patch(url, headers={**manager.headers, "If-Match": '"1"'}, json={"active": False})
    assert retired.status_code == 200 and retired.json()["version"] == 2
    inactive = (await client.get(TEMPLATES, headers=agent.headers, params={"active": "false", "limit": 200})).json()
    assert template["id"] in [t["id"] for t in inactive["items"]]
    assert (await client.delete(url, headers=agent.headers)).status_code == 403
    assert (await client.delete(url, headers=manager.headers)).status_code == 204
    assert (await client.get(url, headers=agent.headers)).status_code == 404
    await probe.expect(
        template["id"],
        "itsm.standard_change_template.created",
        "itsm.standard_change_template.updated",
        "itsm.standard_change_template.deleted",
    )


async def test_a_template_in_use_is_retired_not_deleted(
    client: httpx.AsyncClient, agent: Actor, manager: Actor
) -> None:
    template = await new_template(client, manager)
    await create(client, agent, type="standard", standard_template_id=template["id"])
    url = f"{TEMPLATES}/{template['id']}"
    assert (await client.delete(url, headers=manager.headers)).status_code == 409
    changed = await client.patch(url, headers=manager.headers, json={"implementation_plan": "a better way"})
    assert changed.status_code == 200
    later = await create(client, agent, type="standard", standard_template_id=template["id"])
    assert later["implementation_plan"] == "a better way", "changes raised afterwards follow the template as it is"
