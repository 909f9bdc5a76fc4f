"""Change tests run the real app in-process against a database of their own, built by the real migrations,
and the real RabbitMQ under names of their own. Tokens come from a test issuer the app's verifier trusts."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI
from itsm_shared.testing import (
    TestDatabase,
    TestIssuer,
    create_database,
    drop_database,
    infrastructure,
    migrate,
    remove_topology,
    test_names,
)

# SQLModel nags on every AsyncSession.execute(); the scheduling queries select columns, which is what it is for.
SQLMODEL_EXECUTE_NOTICE = r"ignore:\s*\W*\s*You probably want to use `session.exec\(\)`:DeprecationWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.filterwarnings(SQLMODEL_EXECUTE_NOTICE))


@pytest.fixture(scope="session")
def infra() -> Iterator[tuple[str, str]]:
    with infrastructure() as urls:
        yield urls


@pytest.fixture(scope="session")
async def database(infra: tuple[str, str]) -> AsyncIterator[TestDatabase]:
    db = await create_database(infra[0], "itsm_test_change")
    result = migrate("change", db.admin_url)
    assert result.returncode == 0, result.stderr
    yield db
    await drop_database(db)


@pytest.fixture(scope="session")
async def names(infra: tuple[str, str]) -> AsyncIterator[dict[str, Any]]:
    names = test_names()
    yield names
    await remove_topology(infra[1], names["exchange"], names["dead_letter_exchange"])


@pytest.fixture(scope="session")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="session")
def environment(database: TestDatabase, infra: tuple[str, str], names: dict[str, Any]) -> dict[str, str]:
    env = {
        "ITSM_DATABASE_URL": database.app_url("change"),
        "ITSM_AMQP_URL": infra[1],
        "ITSM_EXCHANGE": names["exchange"],
        "ITSM_DEAD_LETTER_EXCHANGE": names["dead_letter_exchange"],
        "ITSM_QUEUE_PREFIX": names["queue_prefix"],
        "ITSM_OUTBOX_SWEEP_SECONDS": "0.5",
    }
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
async def app(environment: dict[str, str], issuer: TestIssuer) -> AsyncIterator[FastAPI]:
    from change.config import get_settings

    get_settings.cache_clear()
    from change.main import app as change_app

    async with change_app.router.lifespan_context(change_app):
        change_app.state.verifier = issuer.verifier()
        await asyncio.wait_for(change_app.state.runtime.broker_started.wait(), timeout=30)
        yield change_app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://change.test") as c:
        yield c


@pytest.fixture(scope="session")
async def amqp(infra: tuple[str, str]) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    conn = await aio_pika.connect_robust(infra[1])
    yield conn
    await conn.close()


@dataclass
class Actor:
    """A user of given roles, with the headers to act as them."""

    id: uuid.UUID
    headers: dict[str, str]


@pytest.fixture
def actor(issuer: TestIssuer) -> Any:
    def make(*roles: str) -> Actor:
        subject = uuid.uuid4()
        return Actor(subject, {"Authorization": f"Bearer {issuer.token(*roles, subject=subject)}"})

    return make


@pytest.fixture
def agent(actor: Any) -> Actor:
    return actor("agent")  # type: ignore[no-any-return]


@pytest.fixture
def manager(actor: Any) -> Actor:
    return actor("change_manager")  # type: ignore[no-any-return]


@pytest.fixture
def cab(actor: Any) -> Actor:
    return actor("cab_member")  # type: ignore[no-any-return]


@pytest.fixture
def cab2(actor: Any) -> Actor:
    return actor("cab_member")  # type: ignore[no-any-return]


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
