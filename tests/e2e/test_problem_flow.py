"""Issue #5 across services, through the gateway and the real broker: the problem service links incidents
it knows only from events, and the incident service shows the link and the workaround."""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

import httpx
from itsm_shared.testing import eventually

from .conftest import bearer, token

PASSWORD = "a perfectly fine password"
WAIT = 15.0  # seconds


async def user(http: httpx.AsyncClient, admin: str, *roles: str) -> str:
    username = f"pf{uuid.uuid4().hex[:10]}"
    created = await http.post(
        "/api/v1/auth/users",
        headers=bearer(admin),
        json={"username": username, "password": PASSWORD, "roles": list(roles)},
    )
    assert created.status_code == 201, created.text
    return str((await token(http, username, PASSWORD))["access_token"])


async def test_link_auto_link_workaround_and_resolution_cascade(http: httpx.AsyncClient, admin: str) -> None:
    agent = bearer(await user(http, admin, "agent"))
    manager = bearer(await user(http, admin, "problem_manager"))
    ci = f"mail-{uuid.uuid4().hex[:6]}"

    # A problem made a known error for (ci, email).
    problem = (
        await http.post(
            "/api/v1/problems",
            headers=manager,
            json={"title": "Mail relay drops messages", "configuration_item": ci, "category": "email"},
        )
    ).json()
    published = await http.patch(
        f"/api/v1/problems/{problem['id']}",
        headers=manager,
        json={"known_error": True, "workaround": "Restart the relay queue", "symptoms": "bounced mail"},
    )
    assert published.status_code == 200, published.text

    # An incident linked by hand: the problem service must first hear of it through events.
    manual = (
        await http.post("/api/v1/incidents", headers=agent, json={"title": "Cannot send mail", "category": "email"})
    ).json()

    async def linked_by_hand() -> bool:
        r = await http.post(
            f"/api/v1/problems/{problem['id']}/incidents", headers=agent, json={"incident_id": manual["id"]}
        )
        return r.status_code == 201

    await eventually(linked_by_hand, timeout=WAIT, what="the link by hand")

    # An incident matching the known error is linked automatically.
    started = time.monotonic()
    auto = (
        await http.post(
            "/api/v1/incidents",
            headers=agent,
            json={"title": "Mail stuck in outbox", "configuration_item": ci, "category": "email"},
        )
    ).json()

    async def auto_linked() -> dict[str, Any] | None:
        current = (await http.get(f"/api/v1/incidents/{auto['id']}", headers=agent)).json()
        return current if current["problem_id"] == problem["id"] else None

    await eventually(auto_linked, timeout=WAIT, what="the automatic link reaching the incident")
    elapsed = time.monotonic() - started
    print(f"\nincident created -> automatic link visible on the incident: {elapsed * 1000:.0f} ms")

    for incident in (manual, auto):

        async def note_there(i: dict[str, Any] = incident) -> bool:
            current = (await http.get(f"/api/v1/incidents/{i['id']}", headers=agent)).json()
            notes = (await http.get(f"/api/v1/incidents/{i['id']}/notes", headers=agent)).json()
            return current["problem_id"] == problem["id"] and any(
                "Restart the relay queue" in n["body"] and n["visibility"] == "internal" for n in notes
            )

        await eventually(note_there, timeout=WAIT, what=f"the link and workaround note on {incident['number']}")

    links = (await http.get(f"/api/v1/problems/{problem['id']}/incidents", headers=agent)).json()
    assert {(link["incident_id"], link["automatic"]) for link in links} == {(manual["id"], False), (auto["id"], True)}

    # Resolution cascade: resolving the problem resolves its open incidents with solved_by_problem.
    for step, fields in [
        ("assessed", {}),
        ("root_cause_analysis", {}),
        ("fix_in_progress", {"root_cause": "relay queue overflows"}),
    ]:
        r = await http.patch(f"/api/v1/problems/{problem['id']}", headers=manager, json={"status": step, **fields})
        assert r.status_code == 200, r.text
    resolved = await http.patch(
        f"/api/v1/problems/{problem['id']}",
        headers=manager,
        json={
            "status": "resolved",
            "resolution_code": "fix_applied",
            "fix": "queue size raised",
            "resolve_linked_incidents": True,
        },
    )
    assert resolved.status_code == 200, resolved.text

    for incident in (manual, auto):

        async def resolved_by_problem(i: dict[str, Any] = incident) -> bool:
            current = (await http.get(f"/api/v1/incidents/{i['id']}", headers=agent)).json()
            return current["status"] == "resolved" and current["resolution_code"] == "solved_by_problem"

        await eventually(resolved_by_problem, timeout=WAIT, what=f"{incident['number']} resolved by the problem")

    # Unlinking clears problem_id on the incident.
    unlinked = await http.delete(f"/api/v1/problems/{problem['id']}/incidents/{manual['id']}", headers=agent)
    assert unlinked.status_code == 204

    async def cleared() -> bool:
        return (await http.get(f"/api/v1/incidents/{manual['id']}", headers=agent)).json()["problem_id"] is None

    await eventually(cleared, timeout=WAIT, what="problem_id cleared")

    # Every step is in the audit log, read by an auditor.
    auditor = bearer(await user(http, admin, "auditor"))

    async def audited(subject: str, want: set[str]) -> bool:
        r = await http.get("/api/v1/audit/events", headers=auditor, params={"subject": subject, "limit": 200})
        assert r.status_code == 200, r.text
        return want <= {item["type"] for item in r.json()["items"]}

    await eventually(
        lambda: audited(
            problem["id"],
            {
                "itsm.problem.created",
                "itsm.problem.updated",
                "itsm.problem.known_error_published",
                "itsm.problem.incident_linked",
                "itsm.problem.status_changed",
                "itsm.problem.resolved",
                "itsm.problem.incident_unlinked",
            },
        ),
        timeout=WAIT,
        what="the problem's events in the audit log",
    )
    incident_types = {
        "itsm.incident.created",
        "itsm.incident.updated",
        "itsm.incident.note_added",
        "itsm.incident.status_changed",
    }
    for incident in (manual, auto):
        await eventually(
            partial(audited, incident["id"], incident_types),
            timeout=WAIT,
            what=f"{incident['number']}'s events in the audit log",
        )
    linked = (
        await http.get(
            "/api/v1/audit/events",
            headers=auditor,
            params={"subject": problem["id"], "type": "problem.incident_linked"},
        )
    ).json()["items"]
    assert {item["data"]["incident_id"] for item in linked} == {manual["id"], auto["id"]}


async def test_linking_an_unknown_incident_is_422(http: httpx.AsyncClient, admin: str) -> None:
    agent = bearer(await user(http, admin, "agent"))
    problem = (await http.post("/api/v1/problems", headers=agent, json={"title": "Flaky VPN"})).json()
    r = await http.post(
        f"/api/v1/problems/{problem['id']}/incidents", headers=agent, json={"incident_id": str(uuid.uuid4())}
    )
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
