"""Changes through the real gateway (CONTRACT §2, §6, §8): users from the auth API, every request through
Traefik, a plain AMQP subscriber bound to the stack's exchange checking each CloudEvent, and the audit log
holding the same events."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
import icalendar
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE
from itsm_shared.testing import EventProbe, Listen, eventually

from .conftest import LOW_RISK, PLANS, bearer, token

PASSWORD = "a perfectly fine password"
CHANGES = "/api/v1/changes"
WAIT = 15.0  # seconds

HIGH = {**LOW_RISK, "backout": "not_possible"}


@dataclass
class User:
    id: str
    access_token: str

    def headers(self, **extra: str) -> dict[str, str]:
        return {**bearer(self.access_token), **extra}


async def new_user(http: httpx.AsyncClient, admin: str, *roles: str) -> User:
    username = f"chg{uuid.uuid4().hex[:10]}"
    created = await http.post(
        "/api/v1/auth/users",
        headers=bearer(admin),
        json={"username": username, "password": PASSWORD, "roles": list(roles)},
    )
    assert created.status_code == 201, created.text
    return User(created.json()["id"], (await token(http, username, PASSWORD))["access_token"])


def assert_all_cloudevents(events: EventProbe) -> None:
    """Every message on `change.#` parses as a CloudEvent (the official SDK's structured JSON format)."""
    assert all(a.event is not None for a in events.arrivals), [a.message.body for a in events.arrivals if not a.event]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def planned(start: datetime, hours: float, ci: str) -> dict[str, Any]:
    return {
        "planned_start": start.isoformat(),
        "planned_end": (start + timedelta(hours=hours)).isoformat(),
        "configuration_items": [ci],
    }


async def patch(http: httpx.AsyncClient, who: User, change: dict[str, Any], **fields: Any) -> httpx.Response:
    return await http.patch(
        f"{CHANGES}/{change['id']}", headers=who.headers(**{"If-Match": f'"{change["version"]}"'}), json=fields
    )


async def move(
    http: httpx.AsyncClient, who: User, change: dict[str, Any], status: str, **fields: Any
) -> dict[str, Any]:
    response = await patch(http, who, change, status=status, **fields)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == f'"{response.json()["version"]}"'
    return dict(response.json())


async def test_a_high_risk_normal_change_through_cab_to_closed(
    http: httpx.AsyncClient, admin: str, listen: Listen
) -> None:
    requester = await new_user(http, admin, "agent", "cab_member")
    cab1, cab2 = await new_user(http, admin, "cab_member"), await new_user(http, admin, "cab_member")
    auditor = await new_user(http, admin, "auditor")
    events = await listen("change.#")
    ci, correlation = f"e2e-{uuid.uuid4().hex[:8]}", f"e2e-{uuid.uuid4()}"

    body = {"type": "normal", "title": "Migrate the billing database", **PLANS, "risk_assessment": HIGH}
    body |= planned(utc(2032, 5, 4, 20), 3, ci)
    key = {"Idempotency-Key": uuid.uuid4().hex, "X-Correlation-ID": correlation}
    created = await http.post(CHANGES, headers=requester.headers(**key), json=body)
    assert created.status_code == 201, created.text
    replay = await http.post(CHANGES, headers=requester.headers(**key), json=body)
    assert replay.json()["id"] == created.json()["id"]
    change = created.json()
    assert change["number"].startswith("CHG") and change["risk"] == "high" and change["status"] == "new"
    assert (await http.get(f"{CHANGES}/{change['number']}", headers=auditor.headers())).json()["id"] == change["id"]
    stale = await http.patch(f"{CHANGES}/{change['id']}", headers=requester.headers(**{"If-Match": '"9"'}), json={})
    assert stale.status_code == 412

    change = await move(http, requester, change, "assess")
    change = await move(http, requester, change, "authorize")
    nexts = (await http.get(f"{CHANGES}/{change['id']}/transitions", headers=requester.headers())).json()
    assert [t["status"] for t in nexts] == ["cancelled"]
    url = f"{CHANGES}/{change['id']}/approvals"
    own = await http.post(url, headers=requester.headers(), json={"decision": "approve", "comment": "mine"})
    assert own.status_code == 403
    first = await http.post(url, headers=cab1.headers(), json={"decision": "approve", "comment": "dba ok"})
    assert first.status_code == 201 and first.json()["change"]["status"] == "authorize"
    twice = await http.post(url, headers=cab1.headers(), json={"decision": "approve", "comment": "again"})
    assert twice.status_code == 409
    second = await http.post(url, headers=cab2.headers(), json={"decision": "approve", "comment": "ops ok"})
    assert second.status_code == 201 and second.json()["change"]["status"] == "scheduled"
    change = second.json()["change"]
    change = await move(http, requester, change, "implement")
    change = await move(http, requester, change, "review")
    change = await move(http, requester, change, "closed", close_code="successful", close_notes="migrated")

    kinds = ("created", "approved", "approved", "scheduled", "implemented", "closed", *["status_changed"] * 6)
    got = await events.expect(change["id"], *kinds, timeout=WAIT)
    assert_all_cloudevents(events)
    for event in got:
        message = events.message_of(event)
        assert message.content_type == CLOUDEVENTS_CONTENT_TYPE and message.message_id == event["id"]
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.routing_key == event["type"].removeprefix("itsm.")
        assert event["source"] == "/itsm/change" and event["specversion"] == "1.0"
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in got:
        by_type.setdefault(event["type"], []).append(event)
    created_event = by_type["itsm.change.created"][0]
    assert created_event["correlationid"] == correlation and created_event["actorid"] == requester.id
    approvals = [e["data"]["approval_decision"] for e in by_type["itsm.change.approved"]]
    assert [(a["approver_id"], a["comment"], a["quorum_reached"]) for a in approvals] == [
        (cab1.id, "dba ok", False),
        (cab2.id, "ops ok", True),
    ]
    sequences = [e["sequence"] for e in got]
    assert max(sequences) == change["version"] and min(sequences) == 1
    statuses = [e["data"]["changes"]["status"][1] for e in by_type["itsm.change.status_changed"]]
    assert sorted(statuses) == sorted(["assess", "authorize", "scheduled", "implement", "review", "closed"])

    # Every event the subscriber saw is in the audit log too.
    ids = {event["id"] for event in got}

    async def audited() -> set[str]:
        response = await http.get(
            "/api/v1/audit/events", headers=auditor.headers(), params={"subject": change["id"], "limit": 200}
        )
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["items"]}

    await eventually(audited, lambda seen: ids <= seen, timeout=WAIT, what="the change's events in the audit log")


async def test_scheduling_blackouts_and_calendar_through_the_gateway(
    http: httpx.AsyncClient, admin: str, listen: Listen
) -> None:
    agent = await new_user(http, admin, "agent")
    manager, manager2 = await new_user(http, admin, "change_manager"), await new_user(http, admin, "change_manager")
    cab = await new_user(http, admin, "cab_member")
    events = await listen("change.#")
    ci = f"e2e-{uuid.uuid4().hex[:8]}"

    freeze = await http.post(
        "/api/v1/blackout-windows",
        headers=manager.headers(),
        json={
            "name": "weekend freeze",
            "timezone": "Europe/Berlin",
            "start": "2032-03-05T18:00:00",
            "end": "2032-03-08T06:00:00",
            "rrule": "FREQ=WEEKLY;BYDAY=FR",
            "configuration_items": [ci],
        },
    )
    assert freeze.status_code == 201, freeze.text
    assert (
        await http.post(
            "/api/v1/blackout-windows",
            headers=agent.headers(),
            json={"name": "x", "start": "2032-01-01T00:00:00", "end": "2032-01-02T00:00:00"},
        )
    ).status_code == 403

    # a standard change comes from the catalogue change managers keep: an agent cannot declare one
    undeclared = await http.post(CHANGES, headers=agent.headers(), json={"type": "standard", "title": "x", **PLANS})
    assert undeclared.status_code == 403
    template = await http.post(
        f"{CHANGES}/standard-templates",
        headers=manager.headers(),
        json={"name": "Rotate certificates", "category": "tls", **PLANS, "configuration_items": [ci]},
    )
    assert template.status_code == 201, template.text
    # a standard change scheduled on Monday 29 March 2032, 06:00-07:00 CEST: the weekend freeze ends at 04:00Z
    # after the spring DST change, so 04:00Z-05:00Z touches it and is free
    standard = {"type": "standard", "title": "Rotate certificates", "standard_template_id": template.json()["id"]}
    first = (
        await http.post(CHANGES, headers=agent.headers(), json={**standard, **planned(utc(2032, 3, 29, 4), 1, ci)})
    ).json()
    first = await move(http, agent, first, "scheduled")
    # ... and 03:30Z is inside it
    early = (
        await http.post(CHANGES, headers=agent.headers(), json={**standard, **planned(utc(2032, 3, 29, 3, 30), 1, ci)})
    ).json()
    refused = await patch(http, agent, early, status="scheduled")
    assert refused.status_code == 409
    assert {c["kind"] for c in refused.json()["conflicts"]} == {"blackout_window", "change"}
    conflicts = (await http.get(f"{CHANGES}/{early['id']}/conflicts", headers=agent.headers())).json()["conflicts"]
    assert [c["kind"] for c in conflicts] == ["change", "blackout_window"]
    slot = (
        await http.get(
            f"{CHANGES}/{early['id']}/next-slot",
            headers=agent.headers(),
            params={"after": "2032-03-29T03:00:00Z", "duration": "PT1H"},
        )
    ).json()
    assert slot["start"] == "2032-03-29T05:00:00Z", slot

    # an emergency change may enter the freeze, authorised by a change manager
    emergency_body = {"type": "emergency", "title": "Patch the zero-day", **PLANS, "risk_assessment": LOW_RISK}
    emergency = (
        await http.post(
            CHANGES, headers=agent.headers(), json={**emergency_body, **planned(utc(2032, 3, 27, 10), 1, ci)}
        )
    ).json()
    emergency = await move(http, agent, emergency, "authorize")
    by_cab = await http.post(
        f"{CHANGES}/{emergency['id']}/approvals", headers=cab.headers(), json={"decision": "approve"}
    )
    assert by_cab.status_code == 403
    authorised = await http.post(
        f"{CHANGES}/{emergency['id']}/approvals",
        headers=manager.headers(),
        json={"decision": "approve", "comment": "go"},
    )
    assert authorised.status_code == 201 and authorised.json()["change"]["status"] == "scheduled"

    # a rejection returns a change to new
    normal = (
        await http.post(
            CHANGES,
            headers=agent.headers(),
            json={"type": "normal", "title": "Resize volumes", **PLANS, "risk_assessment": LOW_RISK},
        )
    ).json()
    normal = await move(http, agent, normal, "assess")
    normal = await move(http, agent, normal, "authorize")
    rejected = await http.post(
        f"{CHANGES}/{normal['id']}/approvals",
        headers=cab.headers(),
        json={"decision": "reject", "comment": "no plan B"},
    )
    assert rejected.status_code == 201 and rejected.json()["change"]["status"] == "new"
    rejection = await events.one(normal["id"], "rejected", timeout=WAIT)
    assert rejection["data"]["approval_decision"]["comment"] == "no plan B" and rejection["actorid"] == cab.id

    # the risk override is the change manager's, with a reason
    normal = rejected.json()["change"]
    override = {"risk_override": "high", "risk_override_reason": "touches payments"}
    assert (await patch(http, agent, normal, **override)).status_code == 403
    overridden = await patch(http, manager2, normal, **override)
    assert overridden.status_code == 200 and overridden.json()["risk"] == "high"

    # the calendar, as JSON and as iCalendar a calendar client can read
    params = {"start": "2032-03-22T06:00:00Z", "end": "2032-04-05T00:00:00Z", "configuration_item": ci}
    as_json = (await http.get(f"{CHANGES}/calendar", headers=agent.headers(), params=params)).json()
    assert {c["id"] for c in as_json["changes"]} == {first["id"], early["id"], emergency["id"]}
    assert [b["start"] for b in as_json["blackout_windows"]] == ["2032-03-26T17:00:00Z", "2032-04-02T16:00:00Z"]
    as_ics = await http.get(f"{CHANGES}/calendar", headers=agent.headers(Accept="text/calendar"), params=params)
    assert as_ics.status_code == 200 and as_ics.headers["content-type"].startswith("text/calendar")
    calendar = icalendar.Calendar.from_ical(as_ics.content)
    uids = {str(e["UID"]) for e in calendar.walk("VEVENT")}
    assert f"{first['id']}@change.itsm" in uids and len(uids) == 5
    await events.expect(emergency["id"], "created", "approved", "scheduled", timeout=WAIT)
    assert_all_cloudevents(events)
    assert json.dumps(as_json)  # plain JSON, no custom types
