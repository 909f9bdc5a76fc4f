"""Change tests: the shared fixtures (the `itsm` pytest plugin, itsm_shared.testing_fixtures) set for the change
service, actors by role, and helpers that raise and move RFCs through the HTTP API."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI
from itsm_shared.testing import EventProbe, Listen, TestIssuer
from itsm_shared.testing_fixtures import Actor

# SQLModel nags on every AsyncSession.execute(); the scheduling queries select columns, which is what it is for.
SQLMODEL_EXECUTE_NOTICE = r"ignore:\s*\W*\s*You probably want to use `session.exec\(\)`:DeprecationWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.filterwarnings(SQLMODEL_EXECUTE_NOTICE))


@pytest.fixture(scope="session")
def service_name() -> str:
    return "change"


@pytest.fixture
def manager(actor: Callable[..., Actor]) -> Actor:
    return actor("change_manager")


@pytest.fixture
def cab(actor: Callable[..., Actor]) -> Actor:
    return actor("cab_member")


@pytest.fixture
def cab2(actor: Callable[..., Actor]) -> Actor:
    return actor("cab_member")


# The session's standard-change template (PLANS, any configuration item): `create` raises a standard change from it
# unless the test names another template, or passes standard_template_id=None (then only a change manager may).
TEMPLATE: dict[str, str] = {}


@pytest.fixture(scope="session", autouse=True)
async def standard_template(app: FastAPI, issuer: TestIssuer) -> dict[str, Any]:
    subject = uuid.uuid4()
    headers = {"Authorization": f"Bearer {issuer.token('change_manager', subject=subject)}"}
    body = {"name": "Patch a server", "category": "patching", **PLANS}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://change.test") as client:
        response = await client.post("/api/v1/changes/standard-templates", headers=headers, json=body)
    assert response.status_code == 201, response.text
    template: dict[str, Any] = response.json()
    TEMPLATE["id"] = template["id"]
    return template


@pytest.fixture
async def probe(listen: Listen) -> EventProbe:
    """The service's events on the session's exchange (change.* and blackout_window.*); short types mean change.*."""
    return await listen("change.#", "blackout_window.#")


# ---------------------------------------------------------------- helpers

LOW = {
    "business_impact": "low",
    "affected_users": "few",
    "outage_required": "no",
    "tested": "fully",
    "backout": "simple",
    "experience": "routine",
    "business_hours": "no",
}
MODERATE = {**LOW, "outage_required": "yes"}
HIGH = {**LOW, "backout": "not_possible"}
PLANS = {"implementation_plan": "apply the patch", "backout_plan": "restore the snapshot", "test_plan": "smoke tests"}


def unique_ci() -> str:
    """A configuration item of this test alone, so tests never see each other's schedules."""
    return f"ci-{uuid.uuid4().hex[:12]}"


def at(days: float, hours: float = 0) -> datetime:
    """A whole hour in the future (UTC), `days` and `hours` from a fixed base far from today."""
    base = datetime(2031, 1, 6, 0, 0, tzinfo=UTC)  # a Monday
    return base + timedelta(days=days, hours=hours)


def iso(value: datetime) -> str:
    return value.isoformat()


async def create(client: httpx.AsyncClient, who: Actor, **fields: Any) -> dict[str, Any]:
    body = {"type": "normal", "title": "Patch the mail servers", **fields}
    if body["type"] == "standard" and "standard_template_id" not in body:
        body["standard_template_id"] = TEMPLATE["id"]
    response = await client.post("/api/v1/changes", headers=who.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def patch(client: httpx.AsyncClient, who: Actor, change: dict[str, Any], **fields: Any) -> httpx.Response:
    return await client.patch(f"/api/v1/changes/{change['id']}", headers=who.headers, json=fields)


async def move(
    client: httpx.AsyncClient, who: Actor, change: dict[str, Any], status: str, **fields: Any
) -> dict[str, Any]:
    response = await patch(client, who, change, status=status, **fields)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def decide(
    client: httpx.AsyncClient, who: Actor, change: dict[str, Any], decision: str, comment: str | None = "ok"
) -> httpx.Response:
    body: dict[str, Any] = {"decision": decision}
    if comment is not None:
        body["comment"] = comment
    return await client.post(f"/api/v1/changes/{change['id']}/approvals", headers=who.headers, json=body)


def window(start: datetime, hours: float, *cis: str) -> dict[str, Any]:
    return {
        "planned_start": iso(start),
        "planned_end": iso(start + timedelta(hours=hours)),
        "configuration_items": list(cis),
    }


# ---------------------------------------------------------------- moving through the state model

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


# ---------------------------------------------------------------- scheduling

BERLIN = ZoneInfo("Europe/Berlin")


async def scheduled(client: httpx.AsyncClient, who: Actor, start: datetime, hours: float, *cis: str) -> dict[str, Any]:
    """A standard change scheduled at [start, start + hours) on `cis`."""
    change = await create(client, who, type="standard", **PLANS, **window(start, hours, *cis))
    return await move(client, who, change, "scheduled")


async def try_schedule(
    client: httpx.AsyncClient, who: Actor, start: datetime, hours: float, *cis: str, type: str = "standard"
) -> httpx.Response:
    change = await create(client, who, type=type, **PLANS, **window(start, hours, *cis))
    return await patch(client, who, change, status="scheduled")


async def blackout(client: httpx.AsyncClient, who: Actor, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/blackout-windows", headers=who.headers, json={"name": "freeze", **body})
    assert response.status_code == 201, response.text
    return dict(response.json())
