"""Issue #12, point 6: every event type of every service carries every attribute of the event contract
(CONTRACT §8), `sequence` included. The types are those each service's AsyncAPI document says it publishes; the
test drives one of each through the gateway (and, for the webhook service, a receiver on this machine) and checks
every message a plain AMQP subscriber of `#` receives meanwhile, as it arrives on the wire."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import aio_pika
import httpx
import jwt
import pytest
import service_table as services
import stack as stack_module
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE
from itsm_shared.testing import EventProbe, Listen, eventually
from itsm_shared.testing_events import contract_problems

from .conftest import LOW_RISK, PLANS, bearer, token
from .receiver import Answer, Receiver

PASSWORD = "a perfectly fine password"
WAIT = 30.0  # seconds

TYPE = re.compile(r"itsm\.[a-z_]+\.[a-z_]+")


def published_problems(event: dict[str, Any], message: aio_pika.abc.AbstractIncomingMessage) -> list[str]:
    """What the event, as published, lacks of CONTRACT §8 (empty: nothing): the shared envelope check, then what only
    a published event shows (a sequence of 0 or more, the type and source names, id and time, the AMQP message)."""
    problems = contract_problems(event)
    if isinstance(event.get("sequence"), int) and event["sequence"] < 0:
        problems.append(f"sequence {event['sequence']!r} is negative")
    if not TYPE.fullmatch(str(event.get("type"))) or not re.fullmatch(r"/itsm/[a-z]+", str(event.get("source"))):
        problems.append(f"type {event.get('type')!r} or source {event.get('source')!r}")
    try:
        uuid.UUID(str(event.get("id")))
        if datetime.fromisoformat(str(event.get("time"))).utcoffset() is None:
            problems.append("time without an offset")
    except ValueError as exc:
        problems.append(f"id or time: {exc}")
    if message.message_id != event.get("id") or message.content_type != CLOUDEVENTS_CONTENT_TYPE:
        problems.append("message_id or content_type")
    if message.routing_key != str(event.get("type")).removeprefix("itsm."):
        problems.append(f"routing key {message.routing_key}")
    if message.delivery_mode != aio_pika.DeliveryMode.PERSISTENT:
        problems.append("not persistent")
    return problems


async def published_types(http: httpx.AsyncClient) -> dict[str, set[str]]:
    """Each service's event types, as its AsyncAPI document (through the gateway) lists what it publishes."""
    found: dict[str, set[str]] = {}
    for service in services.table():
        document = (await http.get(f"{service.api_prefix}/asyncapi.json")).json()
        found[service.name] = {n for n, c in document["channels"].items() if c["address"] == n.removeprefix("itsm.")}
    return found


class Driver:
    """The requests that make one event of each type, through the gateway."""

    def __init__(self, http: httpx.AsyncClient, admin: str, admin_password: str) -> None:
        self.http, self.admin, self.admin_password = http, bearer(admin), admin_password

    async def call(self, method: str, path: str, who: dict[str, str] | None = None, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, headers=who or self.admin, **kwargs)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    async def user(self, *roles: str) -> tuple[dict[str, Any], dict[str, str]]:
        username = f"ec{uuid.uuid4().hex[:10]}"
        made = await self.call(
            "POST", "/api/v1/auth/users", json={"username": username, "password": PASSWORD, "roles": list(roles)}
        )
        return made, bearer(str((await token(self.http, username, PASSWORD))["access_token"]))

    async def auth(self) -> None:
        """auth.*: users, logins (a name that is no account too), the throttling and its unlock, a revocation,
        service clients, and a signing key revoked (after a rotation, so the admin's next token is the new key's)."""
        user, _ = await self.user("agent")
        await self.call("PATCH", f"/api/v1/auth/users/{user['id']}", json={"full_name": "Event Contract"})
        refresh = (await token(self.http, user["username"], PASSWORD))["refresh_token"]
        await self.call("POST", "/api/v1/auth/revoke", data={"token": refresh})
        form = {"grant_type": "password", "password": "not the password"}
        for name in [user["username"]] * 5 + [f"nobody{uuid.uuid4().hex[:8]}"]:
            refused = await self.http.post("/api/v1/auth/token", data={**form, "username": name})
            assert refused.status_code == 400, refused.text
        await self.call("POST", f"/api/v1/auth/users/{user['id']}/unlock")
        client = await self.call("POST", "/api/v1/auth/clients", json={"name": "event contract"})
        path = f"/api/v1/auth/clients/{client['client_id']}"
        await self.call("PATCH", path, json={"roles": ["agent"]})
        await self.call("POST", f"{path}/rotate-secret")
        await self.call("DELETE", path)
        old = jwt.get_unverified_header(self.admin["Authorization"].removeprefix("Bearer "))["kid"]
        await self.call("POST", "/api/v1/auth/keys/rotate")
        self.admin = bearer(str((await token(self.http, "admin", self.admin_password))["access_token"]))
        await self.call("POST", f"/api/v1/auth/keys/{old}/revoke")  # with a token of the new key

    async def incidents(self) -> dict[str, Any]:
        """incident.*, the SLA events from a P5 policy of seconds (put back at once: the incident keeps its clocks)."""
        saved = next(p for p in await self.call("GET", "/api/v1/sla-policies") if p["priority"] == 5)
        fast = {"name": "seconds", "response_minutes": 0.02, "resolution_minutes": 0.04, "calendar": {"kind": "24x7"}}
        await self.call("PUT", "/api/v1/sla-policies/5", json=fast)
        try:
            await self.call("POST", "/api/v1/incidents", json={"title": "Breaches in seconds"})
        finally:
            body = {k: saved[k] for k in ("name", "response_minutes", "resolution_minutes", "calendar")}
            await self.call("PUT", "/api/v1/sla-policies/5", json=body)
        agent, _ = await self.user("agent")
        incident = await self.call("POST", "/api/v1/incidents", json={"title": "Event contract", "impact": 2})
        path = f"/api/v1/incidents/{incident['id']}"
        await self.call("PATCH", path, json={"status": "in_progress", "assignee_id": agent["id"]})
        await self.call("POST", f"{path}/notes", json={"body": "looking", "visibility": "internal"})
        doomed = await self.call("POST", "/api/v1/incidents", json={"title": "To be deleted"})
        await self.call("DELETE", f"/api/v1/incidents/{doomed['id']}")
        return dict(incident)

    async def problems(self, incident: dict[str, Any]) -> None:
        _, manager = await self.user("problem_manager", "agent")
        problem = await self.call("POST", "/api/v1/problems", manager, json={"title": "Event contract"})
        path = f"/api/v1/problems/{problem['id']}"
        await self.call("PATCH", path, manager, json={"status": "assessed"})

        async def linked() -> bool:
            body = {"incident_id": incident["id"]}
            return (await self.http.post(f"{path}/incidents", headers=manager, json=body)).status_code == 201

        await eventually(linked, timeout=WAIT, what="the problem service to know the incident")
        await self.call("DELETE", f"{path}/incidents/{incident['id']}", manager)
        await self.call("PATCH", path, manager, json={"known_error": True, "workaround": "restart it"})
        await self.call("PATCH", path, manager, json={"status": "root_cause_analysis"})
        await self.call("PATCH", path, manager, json={"status": "fix_in_progress", "root_cause": "a leak"})
        await self.call(
            "PATCH", path, manager, json={"status": "resolved", "resolution_code": "fix_applied", "fix": "patched"}
        )

    async def changes(self) -> None:
        _, manager = await self.user("agent", "change_manager")
        _, cab = await self.user("cab_member")
        ci = f"ec-{uuid.uuid4().hex[:8]}"
        window = {"start": "2033-01-01T00:00:00", "end": "2033-01-02T00:00:00", "configuration_items": [ci]}
        blackout = await self.call("POST", "/api/v1/blackout-windows", manager, json={"name": "freeze", **window})
        await self.call("PATCH", f"/api/v1/blackout-windows/{blackout['id']}", manager, json={"name": "thaw"})
        await self.call("DELETE", f"/api/v1/blackout-windows/{blackout['id']}", manager)
        templates = "/api/v1/changes/standard-templates"
        template = await self.call("POST", templates, manager, json={"name": "Rotate certs", **PLANS})
        await self.call("PATCH", f"{templates}/{template['id']}", manager, json={"name": "Rotate TLS certs"})
        await self.call("DELETE", f"{templates}/{template['id']}", manager)

        planned = {"planned_start": "2033-02-01T10:00:00Z", "planned_end": "2033-02-01T11:00:00Z"}
        body = {"type": "normal", "title": "Event contract", **PLANS, "risk_assessment": LOW_RISK}
        change = await self.call(
            "POST", "/api/v1/changes", manager, json={**body, **planned, "configuration_items": [ci]}
        )
        path = f"/api/v1/changes/{change['id']}"
        await self.call("PATCH", path, manager, json={"title": "Event contract, retitled"})
        await self.call("POST", f"{path}/notes", manager, json={"body": "a note"})
        await self.call("PATCH", path, manager, json={"status": "assess"})
        await self.call("PATCH", path, manager, json={"status": "authorize"})
        await self.call("POST", f"{path}/approvals", cab, json={"decision": "approve", "comment": "ok"})
        await self.call("PATCH", path, manager, json={"status": "implement"})
        await self.call("PATCH", path, manager, json={"status": "review"})
        await self.call(
            "PATCH", path, manager, json={"status": "closed", "close_code": "successful", "close_notes": "ok"}
        )
        other = await self.call("POST", "/api/v1/changes", manager, json=body)
        other_path = f"/api/v1/changes/{other['id']}"
        await self.call("PATCH", other_path, manager, json={"status": "assess"})
        await self.call("PATCH", other_path, manager, json={"status": "authorize"})
        await self.call("POST", f"{other_path}/approvals", cab, json={"decision": "reject", "comment": "no"})

    async def webhooks(self, receiver: Receiver, incident: dict[str, Any]) -> None:
        """webhook.*: a subscription created, changed, its secret rotated, deleted; another disabled by a 410."""
        quiet = {"url": receiver.url("/quiet"), "event_types": ["itsm.change.closed"], "subjects": [str(uuid.uuid4())]}
        subscription = await self.call("POST", "/api/v1/webhooks", json=quiet)
        path = f"/api/v1/webhooks/{subscription['id']}"
        await self.call("PATCH", path, json={"description": "event contract"})
        await self.call("POST", f"{path}/rotate-secret")
        await self.call("DELETE", path)
        gone = f"/gone/{uuid.uuid4().hex[:8]}"
        receiver.script(gone, Answer(410))
        await self.call(
            "POST",
            "/api/v1/webhooks",
            json={"url": receiver.url(gone), "event_types": ["itsm.incident.note_added"], "subjects": [incident["id"]]},
        )
        await self.call("POST", f"/api/v1/incidents/{incident['id']}/notes", json={"body": "for the hook"})


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


async def test_every_event_type_of_every_service_carries_every_attribute_of_the_contract(
    http: httpx.AsyncClient, admin: str, listen: Listen, receiver: Receiver, stack: stack_module.Stack
) -> None:
    by_service = await published_types(http)
    expected = set().union(*by_service.values())
    assert {"itsm.auth.login_succeeded", "itsm.incident.sla_breached", "itsm.webhook.subscription_disabled"} <= expected
    probe = await listen("#")
    driver = Driver(http, admin, str(stack.settings.bootstrap_admin_password))
    await driver.auth()
    incident = await driver.incidents()
    await driver.problems(incident)
    await driver.changes()
    await driver.webhooks(receiver, incident)

    def complete(p: EventProbe) -> set[str]:
        seen = {e["type"] for e in p.events}
        return seen if seen >= expected else set()

    await probe.until(complete, timeout=WAIT, what=f"one event of each of the {len(expected)} types")
    problems: dict[str, list[str]] = {}
    for arrival in probe.arrivals:
        event = json.loads(arrival.message.body)
        if found := published_problems(event, arrival.message):
            problems.setdefault(f"{event.get('type')} {event.get('subject')}", found)
    assert problems == {}, problems
    for name, types in by_service.items():  # each type from its own service (audit publishes none)
        sources = {e["source"] for e in probe.events if e["type"] in types}
        assert sources == ({f"/itsm/{name}"} if types else set()), (name, sources)
