"""Audit tests: the shared fixtures (the `itsm` pytest plugin, itsm_shared.testing_fixtures) set for the audit
service, plus what the log's own tests need: direct database connections (as the service's role, and as a
superuser who can tamper), the rewrite the table's owner can do, a publisher onto the session's exchange, and
storing a batch through the service's own code (`store`)."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aio_pika
import asyncpg
import pytest
from audit import ingest
from audit.anchors import AnchorKeys
from audit.chain import canonical_json, format_received_at, record_hash
from fastapi import FastAPI
from itsm_shared.db import asyncpg_dsn, transaction
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


# The session's anchor key: the service holds it; an attacker of the database does not. Tests use it only to put
# back what an attack changed.
ANCHOR_SEED = os.urandom(32)
ANCHOR_KEYS = AnchorKeys.of(ANCHOR_SEED)
# The consumer queues a replay may go to in this session (the runner gives the table's).
REPLAY_QUEUES = ("problem.incidents", "incident.problem-linked")


@pytest.fixture(scope="session")
def extra_env() -> dict[str, str]:
    # Short retry pauses: the outage test waits for the writer to notice the database is back.
    return {
        "ITSM_AUDIT_RETRY_MAX_SECONDS": "2",
        "ITSM_DB_POOL_SIZE": "5",
        "ITSM_AUDIT_ANCHOR_KEY": base64.urlsafe_b64encode(ANCHOR_SEED).decode(),
        "ITSM_AUDIT_REPLAY_QUEUES": ",".join(REPLAY_QUEUES),
    }


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


AmqpAs = Callable[[str], Awaitable[aio_pika.abc.AbstractRobustConnection]]


def _publisher_of(item: dict[str, Any] | bytes, routing_key: str | None) -> tuple[bytes, str, str, str]:
    """(body, message id, routing key, service): an event goes out as the service its source names would publish
    it; bytes as that of the event they hold, if any, else as the incident service (key `incident.junk`)."""
    if not isinstance(item, bytes):
        service = item["source"].rsplit("/", 1)[-1]
        return json.dumps(item).encode(), item["id"], routing_key or item["type"].removeprefix("itsm."), service
    try:
        held = json.loads(item)
    except ValueError:
        held = None
    source = held.get("source") if isinstance(held, dict) else None
    service = source.rsplit("/", 1)[-1] if isinstance(source, str) and source.startswith("/itsm/") else "incident"
    kind = held.get("type") if isinstance(held, dict) else None
    own = isinstance(kind, str) and kind.startswith(f"itsm.{service}.")
    key = routing_key or (str(kind).removeprefix("itsm.") if own else f"{service}.junk")
    return item, str(uuid.uuid4()), key, service


async def publish(
    amqp_as: AmqpAs,
    names: dict[str, Any],
    events: Sequence[dict[str, Any] | bytes],
    *,
    routing_key: str | None = None,
    times: int = 1,
) -> None:
    """Publish to the session's exchange with confirms, `times` deliveries of each (a duplicate delivery is
    what at-least-once gives a consumer), each as its service's broker user (`amqp_as`), `user_id` set."""
    channels: dict[str, tuple[aio_pika.abc.AbstractChannel, aio_pika.abc.AbstractExchange, str | None]] = {}
    try:
        for _ in range(times):
            for item in events:
                body, message_id, key, service = _publisher_of(item, routing_key)
                if service not in channels:
                    connection = await amqp_as(service)
                    channel = await connection.channel(publisher_confirms=True)
                    exchange = await channel.get_exchange(names["exchange"])
                    channels[service] = (channel, exchange, connection.url.user)
                _, exchange, user = channels[service]
                await exchange.publish(
                    aio_pika.Message(
                        body,
                        message_id=message_id,
                        content_type=CLOUDEVENTS_CONTENT_TYPE,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        user_id=user,
                    ),
                    routing_key=key,
                )
    finally:
        for channel, _, _ in channels.values():
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


async def tamper(superuser: asyncpg.Connection, sql: str, *args: Any) -> None:
    """Run `sql` as the superuser with the append-only triggers switched off (`session_replication_role`)."""
    async with superuser.transaction():
        await superuser.execute("SET LOCAL session_replication_role = replica")
        await superuser.execute(sql, *args)


async def rewrite_chain(
    conn: asyncpg.Connection,
    since: int,
    events: Mapping[int, str] | None = None,
    *,
    drop_anchors: bool = False,
    anchors_back: Sequence[asyncpg.Record] = (),
    keys: AnchorKeys | None = None,
) -> None:
    """What the owner of the audit tables can do (`conn` is a superuser's; it acts as `audit_owner`): switch the
    append-only triggers off, change events, recompute the hash of every record from `since` to the end (the
    recipe is public), drop the checkpoints that would give it away (and, with `drop_anchors`, the anchors from
    `since` on), switch the triggers back on. All under the writer's chain lock. With `keys` (which only the
    audit service holds) it also re-signs the anchors from `since` on, after putting back `anchors_back`: the
    tests' way to undo an attack."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('itsm.audit.chain'))")
        await conn.execute("SET LOCAL ROLE audit_owner")
        tables = ("audit_event", "audit_anchor", "audit_checkpoint")
        for table in tables:
            await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for seq, event in (events or {}).items():
            await conn.execute("UPDATE audit_event SET event = $2::jsonb WHERE seq = $1", seq, event)
        prev = await conn.fetchval("SELECT prev_hash FROM audit_event WHERE seq = $1", since)
        rows = await conn.fetch(
            "SELECT seq, event_id, received_at, event::text AS event FROM audit_event WHERE seq >= $1 ORDER BY seq",
            since,
        )
        hashes: list[tuple[int, str, str]] = []
        for row in rows:
            received = format_received_at(row["received_at"])
            digest = record_hash(
                prev, row["seq"], str(row["event_id"]), received, canonical_json(json.loads(row["event"]))
            )
            hashes.append((row["seq"], prev, digest))
            prev = digest
        await conn.executemany("UPDATE audit_event SET prev_hash = $2, hash = $3 WHERE seq = $1", hashes)
        await conn.execute("DELETE FROM audit_checkpoint WHERE seq >= $1", since)
        if drop_anchors:
            await conn.execute("DELETE FROM audit_anchor WHERE seq >= $1", since)
        if anchors_back:
            await conn.executemany(
                "INSERT INTO audit_anchor (seq, from_seq, kid, signature) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (seq) DO NOTHING",
                [(a["seq"], a["from_seq"], a["kid"], a["signature"]) for a in anchors_back],
            )
        if keys is not None:
            by_seq = {seq: digest for seq, _, digest in hashes}
            anchors = await conn.fetch("SELECT seq, from_seq FROM audit_anchor WHERE seq >= $1", since)
            signed = [keys.sign(a["from_seq"], a["seq"], by_seq[a["seq"]]) for a in anchors]
            await conn.executemany(
                "UPDATE audit_anchor SET kid = $2, signature = $3 WHERE seq = $1",
                [(a.seq, a.kid, a.signature) for a in signed],
            )
        for table in tables:
            await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


# ---------------------------------------------------------------- storing through the service's own code


def incoming(e: dict[str, Any] | str) -> ingest.Incoming:
    return ingest.parse_incoming((e if isinstance(e, str) else json.dumps(e)).encode())


async def store(
    sessions: async_sessionmaker[AsyncSession], *events: dict[str, Any] | str, keys: AnchorKeys | None = None
) -> list[Any]:
    async with transaction(sessions) as session:
        return await ingest.store_batch(session, [incoming(e) for e in events], keys)
