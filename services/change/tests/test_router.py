"""The HTTP contract of the change service (CONTRACT §2, §6): auth, errors, ETag/If-Match, Idempotency-Key,
lists, notes, blackout windows, the AsyncAPI document and the migrations."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from itsm_shared.testing import EventProbe, migrate

from .conftest import LOW, PLANS, Actor, at, create, decide, iso, move, patch, unique_ci, window


async def test_requests_without_a_valid_token_are_401(client: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/api/v1/changes"), ("POST", "/api/v1/changes"), ("GET", "/api/v1/blackout-windows")):
        response = await client.request(method, path, json={})
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.headers["content-type"] == "application/problem+json"
    forged = await client.get("/api/v1/changes", headers={"Authorization": "Bearer not.a.token"})
    assert forged.status_code == 401


async def test_requesters_have_no_access_and_auditors_only_read(
    client: httpx.AsyncClient, agent: Actor, actor: Any
) -> None:
    change = await create(client, agent, **PLANS)
    requester = actor("requester")
    assert (await client.get("/api/v1/changes", headers=requester.headers)).status_code == 403
    assert (await client.get(f"/api/v1/changes/{change['id']}", headers=requester.headers)).status_code == 403
    auditor = actor("auditor")
    assert (await client.get(f"/api/v1/changes/{change['id']}", headers=auditor.headers)).status_code == 200
    assert (await client.get(f"/api/v1/changes/{change['id']}/transitions", headers=auditor.headers)).json() == []
    assert (await patch(client, auditor, change, title="x")).status_code == 403
    response = await client.post("/api/v1/changes", headers=auditor.headers, json={"type": "normal", "title": "x"})
    assert response.status_code == 403
    note = await client.post(f"/api/v1/changes/{change['id']}/notes", headers=auditor.headers, json={"body": "x"})
    assert note.status_code == 403
    cab = actor("cab_member")
    assert (
        await client.post("/api/v1/changes", headers=cab.headers, json={"type": "normal", "title": "x"})
    ).status_code == 403


async def test_read_by_id_or_number_with_etag(client: httpx.AsyncClient, agent: Actor) -> None:
    change = await create(client, agent)
    assert change["number"].startswith("CHG") and len(change["number"]) == 10
    by_number = await client.get(f"/api/v1/changes/{change['number'].lower()}", headers=agent.headers)
    assert by_number.status_code == 200 and by_number.json()["id"] == change["id"]
    assert by_number.headers["etag"] == '"1"'
    assert (await client.get("/api/v1/changes/CHG9999999", headers=agent.headers)).status_code == 404
    assert (await client.get(f"/api/v1/changes/{uuid.uuid4()}", headers=agent.headers)).status_code == 404


async def test_if_match(client: httpx.AsyncClient, agent: Actor) -> None:
    change = await create(client, agent)
    url = f"/api/v1/changes/{change['id']}"
    stale = await client.patch(url, headers={**agent.headers, "If-Match": '"7"'}, json={"title": "x"})
    assert stale.status_code == 412
    fresh = await client.patch(url, headers={**agent.headers, "If-Match": '"1"'}, json={"title": "x"})
    assert fresh.status_code == 200 and fresh.headers["etag"] == '"2"'
    again = await client.patch(url, headers={**agent.headers, "If-Match": '"1"'}, json={"title": "y"})
    assert again.status_code == 412


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"risk": "low"}, "risk"),
        ({"number": "CHG0000001"}, "number"),
        ({"version": 3}, "version"),
        ({"approval": "approved"}, "approval"),
        ({"requested_by": str(uuid.uuid4())}, "requested_by"),
        ({"status": "scheduled"}, "status"),
        ({"colour": "red"}, "colour"),
        ({"type": "urgent"}, "type"),
        ({"planned_start": "2031-01-01T10:00:00"}, "planned_start"),
        ({"configuration_items": [""]}, "configuration_items"),
    ],
)
async def test_invalid_or_server_owned_fields_are_422(
    client: httpx.AsyncClient, agent: Actor, body: dict[str, Any], field: str
) -> None:
    response = await client.post(
        "/api/v1/changes", headers=agent.headers, json={"type": "normal", "title": "x", **body}
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["status"] == 422 and problem["errors"]
    assert field in response.text


async def test_planned_end_after_start(client: httpx.AsyncClient, agent: Actor) -> None:
    start = at(10)
    response = await client.post(
        "/api/v1/changes",
        headers=agent.headers,
        json={"type": "normal", "title": "x", "planned_start": iso(start), "planned_end": iso(start)},
    )
    assert response.status_code == 422
    change = await create(client, agent, planned_start=iso(start), planned_end=iso(at(10, 1)))
    assert (await patch(client, agent, change, planned_end=iso(at(9)))).status_code == 422
    assert (await patch(client, agent, change, close_code="successful")).status_code == 422


async def test_idempotent_create(client: httpx.AsyncClient, agent: Actor) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"type": "normal", "title": f"idempotent {uuid.uuid4()}"}
    first = await client.post("/api/v1/changes", headers={**agent.headers, **key}, json=body)
    replay = await client.post("/api/v1/changes", headers={**agent.headers, **key}, json=body)
    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json() and replay.headers["idempotent-replayed"] == "true"
    other = await client.post("/api/v1/changes", headers={**agent.headers, **key}, json={**body, "title": "other"})
    assert other.status_code == 422
    listed = (await client.get("/api/v1/changes", headers=agent.headers, params={"requested_by": str(agent.id)})).json()
    assert [c["title"] for c in listed["items"]].count(body["title"]) == 1


async def test_idempotent_approval_records_one_decision(client: httpx.AsyncClient, agent: Actor, cab: Actor) -> None:
    change = await create(client, agent, **PLANS, risk_assessment={**LOW, "backout": "not_possible"})
    change = await move(client, agent, change, "assess")
    change = await move(client, agent, change, "authorize")
    headers = {**cab.headers, "Idempotency-Key": "approve-" + change["id"]}
    url = f"/api/v1/changes/{change['id']}/approvals"
    first = await client.post(url, headers=headers, json={"decision": "approve", "comment": "ok"})
    retry = await client.post(url, headers=headers, json={"decision": "approve", "comment": "ok"})
    assert first.status_code == retry.status_code == 201
    assert retry.json()["id"] == first.json()["id"]
    assert len((await client.get(url, headers=agent.headers)).json()) == 1


async def test_list_filters_and_keyset_pages(client: httpx.AsyncClient, agent: Actor) -> None:
    ci, incident = unique_ci(), uuid.uuid4()
    made = [
        await create(client, agent, type="standard", configuration_items=[ci], incident_ids=[str(incident)])
        for _ in range(5)
    ]
    await create(client, agent, type="normal", configuration_items=[ci])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"configuration_item": ci, "type": "standard", "limit": 2, "sort": "created_at"}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/changes", headers=agent.headers, params=params)).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [c["id"] for c in made]
    by_incident = (
        await client.get("/api/v1/changes", headers=agent.headers, params={"incident_id": str(incident)})
    ).json()
    assert len(by_incident["items"]) == 5
    assert (await client.get("/api/v1/changes", headers=agent.headers, params={"status": "nope"})).status_code == 422
    assert (await client.get("/api/v1/changes", headers=agent.headers, params={"limit": 500})).status_code == 422
    assert (await client.get("/api/v1/changes", headers=agent.headers, params={"sort": "title"})).status_code == 422


async def test_links_to_problems_and_incidents(client: httpx.AsyncClient, agent: Actor) -> None:
    problem, incident = uuid.uuid4(), uuid.uuid4()
    change = await create(client, agent, problem_ids=[str(problem)])
    updated = (await patch(client, agent, change, incident_ids=[str(incident), str(incident)])).json()
    assert updated["problem_ids"] == [str(problem)] and updated["incident_ids"] == [str(incident)]
    listed = (await client.get("/api/v1/changes", headers=agent.headers, params={"problem_id": str(problem)})).json()
    assert [c["id"] for c in listed["items"]] == [change["id"]]


async def test_notes(
    client: httpx.AsyncClient,
    agent: Actor,
    cab: Actor,
    probe: EventProbe,
) -> None:
    change = await create(client, agent)
    url = f"/api/v1/changes/{change['id']}/notes"
    first = await client.post(url, headers=agent.headers, json={"body": "vendor confirmed the window"})
    second = await client.post(url, headers=cab.headers, json={"body": "CAB: fine"})
    assert first.status_code == second.status_code == 201
    await probe.expect(change["id"], "note_added", "note_added")
    notes = (await client.get(url, headers=agent.headers)).json()
    assert [(n["body"], n["author_id"]) for n in notes] == [
        ("vendor confirmed the window", str(agent.id)),
        ("CAB: fine", str(cab.id)),
    ]


async def test_transitions_name_their_required_fields(client: httpx.AsyncClient, agent: Actor) -> None:
    change = await create(client, agent, type="emergency")
    response = await client.get(f"/api/v1/changes/{change['id']}/transitions", headers=agent.headers)
    assert response.json() == [
        {"status": "authorize", "required_fields": ["implementation_plan", "backout_plan", "risk_assessment"]},
        {"status": "cancelled", "required_fields": []},
    ]


async def test_risk_questionnaire_is_served(client: httpx.AsyncClient, agent: Actor) -> None:
    doc = (await client.get("/api/v1/changes/risk-questionnaire", headers=agent.headers)).json()
    assert {q["name"] for q in doc["questions"]} == set(LOW)
    assert any(r["name"] == "no_backout" and r["risk"] == "high" for r in doc["rules"])


async def test_asyncapi_documents_the_change_events(client: httpx.AsyncClient) -> None:
    document = (await client.get("/api/v1/changes/asyncapi.json")).json()
    text = str(document)
    for action in (
        "created",
        "updated",
        "status_changed",
        "approved",
        "rejected",
        "scheduled",
        "implemented",
        "closed",
    ):
        assert f"change.{action}" in text, action
    assert "blackout_window.created" in text


def test_models_have_their_migration(database: Any) -> None:
    result = migrate("change", database.admin_url, "--check")
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- blackout windows

FRIDAY_EVENING = {
    "name": "weekend freeze",
    "timezone": "Europe/Berlin",
    "start": "2031-01-10T18:00:00",
    "end": "2031-01-13T06:00:00",
    "rrule": "FREQ=WEEKLY;BYDAY=FR",
}


async def test_blackout_windows_are_written_by_change_managers(
    client: httpx.AsyncClient,
    manager: Actor,
    agent: Actor,
    actor: Any,
    probe: EventProbe,
) -> None:
    body = {**FRIDAY_EVENING, "configuration_items": [unique_ci()]}
    for who in (agent, actor("admin"), actor("cab_member")):
        assert (await client.post("/api/v1/blackout-windows", headers=who.headers, json=body)).status_code == 403
    created = await client.post("/api/v1/blackout-windows", headers=manager.headers, json=body)
    assert created.status_code == 201, created.text
    window_ = created.json()
    assert window_["start"] == "2031-01-10T18:00:00+01:00" and window_["end"] == "2031-01-13T06:00:00+01:00"
    assert window_["recurring"] is True and created.headers["etag"] == '"1"'
    url = f"/api/v1/blackout-windows/{window_['id']}"
    assert (await client.get(url, headers=agent.headers)).json() == window_
    stale = await client.patch(url, headers={**manager.headers, "If-Match": '"9"'}, json={"name": "x"})
    assert stale.status_code == 412
    renamed = await client.patch(url, headers={**manager.headers, "If-Match": '"1"'}, json={"name": "freeze"})
    assert renamed.status_code == 200 and renamed.json()["version"] == 2
    assert (await client.patch(url, headers=agent.headers, json={"name": "mine"})).status_code == 403
    # an offset-bearing time is converted to the window's own zone
    moved = await client.patch(url, headers=manager.headers, json={"start": "2031-01-10T16:00:00Z"})
    assert moved.json()["start"] == "2031-01-10T17:00:00+01:00"
    assert (await client.delete(url, headers=agent.headers)).status_code == 403
    assert (await client.delete(url, headers=manager.headers)).status_code == 204
    assert (await client.get(url, headers=agent.headers)).status_code == 404
    events = await probe.expect(
        window_["id"],
        "itsm.blackout_window.created",
        "itsm.blackout_window.updated",
        "itsm.blackout_window.deleted",
    )
    update = next(e for e in events if e["type"] == "itsm.blackout_window.updated")
    assert update["data"]["changes"] == {"name": ["weekend freeze", "freeze"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"end": "2031-01-10T17:00:00"}, "end"),
        ({"rrule": "FREQ=SOMETIMES"}, "rrule"),
        ({"rrule": "FREQ=MINUTELY"}, "rrule"),
        ({"rrule": "DTSTART:20310101T000000\nRRULE:FREQ=DAILY"}, "rrule"),
        ({"rrule": "FREQ=WEEKLY;UNTIL=20310301T000000"}, "rrule"),
        ({"id": str(uuid.uuid4())}, "id"),
    ],
)
async def test_invalid_blackout_windows_are_422(
    client: httpx.AsyncClient, manager: Actor, change: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/blackout-windows", headers=manager.headers, json={**FRIDAY_EVENING, **change})
    assert response.status_code == 422, response.text
    assert field in response.text


async def test_blackout_windows_list(client: httpx.AsyncClient, manager: Actor) -> None:
    ci = unique_ci()
    ids = []
    for n in range(3):
        body = {**FRIDAY_EVENING, "name": f"list {ci} {n}", "configuration_items": [ci]}
        ids.append((await client.post("/api/v1/blackout-windows", headers=manager.headers, json=body)).json()["id"])
    page = (
        await client.get(
            "/api/v1/blackout-windows", headers=manager.headers, params={"limit": 200, "sort": "-created_at"}
        )
    ).json()
    listed = [w["id"] for w in page["items"] if w["id"] in ids]
    assert listed == list(reversed(ids))
    for window_id in ids:
        await client.delete(f"/api/v1/blackout-windows/{window_id}", headers=manager.headers)


async def test_scheduled_events_carry_the_window(
    client: httpx.AsyncClient,
    agent: Actor,
    cab: Actor,
    probe: EventProbe,
) -> None:
    change = await create(client, agent, **PLANS, risk_assessment=LOW, **window(at(12), 2, unique_ci()))
    change = await move(client, agent, change, "assess")
    change = await move(client, agent, change, "authorize")
    await decide(client, cab, change, "approve")
    events = await probe.expect(change["id"], "scheduled")
    scheduled = next(e for e in events if e["type"] == "itsm.change.scheduled")
    assert scheduled["data"]["planned_start"].startswith("2031-01-18T00:00:00")
    assert scheduled["data"]["status"] == "scheduled"
