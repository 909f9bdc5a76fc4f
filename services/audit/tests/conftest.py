"""Audit tests: the shared fixtures (the `itsm` pytest plugin, itsm_shared.testing_fixtures) set for the audit
service, plus what the log's own tests need: direct database connections (as the service's role, and as a
superuser who can tamper) and a publisher onto the session's exchange."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aio_pika
import asyncpg
import pytest
from fastapi import FastAPI
from itsm_shared.db import asyncpg_dsn
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, new_event
from itsm_shared.testing import TestDatabase, eventually
from itsm_shared.testing_fixtures import Actor
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

# SQLModel nags on every AsyncSession.execute(); the log runs text() and Core statements, which is what it is for.
SQLMODEL_EXECUTE_NOTICE = r"ignore:\s*\W*\s*You probably want to use `session.exec\(\)`:DeprecationWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.filterwarnings(SQLMODEL_EXECUTE_NOTICE))


@pytest.fixture(scope="session")
def service_name() -> str:
    return "audit"


@pytest.fixture(scope="session")
def consumer_queues() -> tuple[str, ...]:
    return ("audit.ingest",)


@pytest.fixture(scope="session")
def extra_env() -> dict[str, str]:
    # Short retry pauses: the outage test waits for the writer to notice the database is back.
    return {"ITSM_AUDIT_RETRY_MAX_SECONDS": "2", "ITSM_DB_POOL_SIZE": "5"}


@pytest.fixture
def auditor(actor: Callable[..., Actor]) -> Actor:
    return actor("auditor")


@pytest.fixture
def requester(actor: Callable[..., Actor]) -> Actor:
    return actor("requester")


@pytest.fixture
def sessions(app: FastAPI) -> async_sessionmaker[AsyncSession]:
    factory: async_sessionmaker[AsyncSession] = app.state.sessions
    return factory


@pytest.fixture
def ingest_queue(names: dict[str, Any]) -> str:
    return f"{names['queue_prefix']}audit.ingest"


@pytest.fixture
async def superuser(database: TestDatabase) -> AsyncIterator[asyncpg.Connection]:
    """The database's superuser: what an attacker with full access to PostgreSQL would hold."""
    conn = await asyncpg.connect(asyncpg_dsn(database.admin_url))
    await conn.execute("SET search_path TO audit")
    yield conn
    await conn.close()


@pytest.fixture
async def as_service_role(database: TestDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database.app_url("audit")))
    yield conn
    await conn.close()


def event(type: str = "incident.created", subject: Any = None, **data: Any) -> dict[str, Any]:
    """A CloudEvent as the services publish it."""
    made = new_event(service=type.split(".")[0], type=type, subject=subject or uuid.uuid4(), data=data or {"n": 1})
    made["sequence"] = 1
    return made


async def publish(
    amqp: aio_pika.abc.AbstractRobustConnection,
    names: dict[str, Any],
    events: Sequence[dict[str, Any] | bytes],
    *,
    routing_key: str | None = None,
    times: int = 1,
) -> None:
    """Publish to the session's exchange with confirms, `times` deliveries of each (a duplicate delivery is
    what at-least-once gives a consumer)."""
    channel = await amqp.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(names["exchange"])
        for _ in range(times):
            for item in events:
                if isinstance(item, bytes):
                    body, message_id, key = item, str(uuid.uuid4()), routing_key or "junk.created"
                else:
                    body, message_id = json.dumps(item).encode(), item["id"]
                    key = routing_key or item["type"].removeprefix("itsm.")
                await exchange.publish(
                    aio_pika.Message(
                        body,
                        message_id=message_id,
                        content_type=CLOUDEVENTS_CONTENT_TYPE,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=key,
                )
    finally:
        await channel.close()


async def stored(superuser: asyncpg.Connection, ids: Sequence[str]) -> dict[str, int]:
    """event id -> how many records carry it."""
    rows = await superuser.fetch(
        "SELECT event_id::text AS id, count(*) AS n FROM audit_event WHERE event_id = ANY($1::uuid[]) GROUP BY 1",
        list(ids),
    )
    return {r["id"]: r["n"] for r in rows}


async def wait_stored(superuser: asyncpg.Connection, ids: Sequence[str], timeout: float = 15.0) -> dict[str, int]:
    async def all_there() -> dict[str, int] | None:
        found = await stored(superuser, ids)
        return found if len(found) == len(set(ids)) else None

    return await eventually(all_there, timeout=timeout, what=f"{len(set(ids))} events stored")


async def assert_chain_is_gap_free(superuser: asyncpg.Connection) -> int:
    row = await superuser.fetchrow("SELECT count(*) AS n, min(seq) AS low, max(seq) AS high FROM audit_event")
    assert row is not None
    assert row["n"] == 0 or (row["low"] == 1 and row["high"] == row["n"]), dict(row)
    return int(row["n"])
