"""Risk (issue #6): the weighted questionnaire and its rules, computed and recomputed over HTTP, a change
manager's override with a reason."""

from __future__ import annotations

import httpx
from change import risk
from change.models import Risk

from .conftest import HIGH, LOW, PLANS, Actor, create, expect_status, move, patch

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
