"""Ingest on the real broker: every event once under duplicate delivery and with two consumers at once, poison
parked while the stream goes on, and a real PostgreSQL outage that loses nothing and parks nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import uuid
from collections.abc import Sequence
from typing import Any

import aio_pika
import asyncpg
import pytest
from audit.config import get_settings
from audit.consumers import ingest
from audit.ingest import Incoming, Outcome, Stored, store_batch
from audit.verify import verify_chain
from fastapi import FastAPI
from itsm_shared.broker import make_broker
from itsm_shared.db import asyncpg_dsn
from itsm_shared.testing import TestDatabase as Database
from itsm_shared.testing import eventually
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .conftest import AmqpAs, assert_chain_is_gap_free, event, publish, stored, wait_stored

OUTAGE_SECONDS = 30


async def parked(amqp: aio_pika.abc.AbstractRobustConnection, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Everything in `<queue>.dlq` right now, taken off it."""
    channel = await amqp.channel()
    try:
        dlq = await channel.declare_queue(f"{queue}.dlq", passive=True)
        got = []
        while (message := await dlq.get(no_ack=True, fail=False)) is not None:
            got.append(message)
        return got
    finally:
        await channel.close()


def header(message: aio_pika.abc.AbstractIncomingMessage, name: str) -> str:
    value = (message.headers or {}).get(name)
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_duplicate_deliveries_are_stored_once(
    app: FastAPI,
    amqp: aio_pika.abc.AbstractRobustConnection,
    amqp_as: AmqpAs,
    names: dict[str, Any],
    superuser: asyncpg.Connection,
) -> None:
    events = [event("incident.updated") for _ in range(20)]
    await publish(amqp_as, names, events, times=3)
    ids = [e["id"] for e in events]
    found = await wait_stored(superuser, ids)
    await asyncio.sleep(0.5)  # let the later deliveries arrive too: they must change nothing
    assert await stored(superuser, ids) == found == dict.fromkeys(ids, 1)
    order = await superuser.fetch(
        "SELECT event_id::text FROM audit_event WHERE event_id = ANY($1::uuid[]) ORDER BY seq", ids
    )
    assert [r[0] for r in order] == ids  # arrival order
    await assert_chain_is_gap_free(superuser)


async def test_two_consumers_at_once_store_each_event_once_on_one_chain(
    app: FastAPI,
    amqp: aio_pika.abc.AbstractRobustConnection,
    amqp_as: AmqpAs,
    names: dict[str, Any],
    superuser: asyncpg.Connection,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A second audit consumer (its own broker connection and batch consumer, as a second process would have)
    on the same queue as the app's, with every event delivered twice: the deliveries spread over both."""
    settings = get_settings()
    second_stored: list[int] = []

    async def store(session: AsyncSession, batch: Sequence[Incoming]) -> list[Outcome]:
        outcomes = await store_batch(session, batch)
        second_stored.extend(o.seq for o in outcomes if isinstance(o, Stored))
        return outcomes

    broker = make_broker(settings)  # the second consumer parks through a broker of its own
    await broker.connect()
    second = ingest(settings=settings, audit=settings, broker=broker, sessions=sessions, handle=store)
    consuming = asyncio.create_task(second.run())
    try:
        events = [event("change.updated") for _ in range(400)]
        producers = [publish(amqp_as, names, events[i::4], times=2) for i in range(4)]  # four producers at once
        await asyncio.gather(*producers)
        ids = [e["id"] for e in events]
        found = await wait_stored(superuser, ids, timeout=30)
        await asyncio.sleep(0.5)
        assert await stored(superuser, ids) == found == dict.fromkeys(ids, 1)
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await broker.stop()
    assert 0 < len(second_stored) < len(ids), "both consumers should have stored some"
    await assert_chain_is_gap_free(superuser)
    assert (await verify_chain(sessions, full=True, chunk=1000)).ok


async def test_poison_is_parked_with_its_reason_and_the_stream_goes_on(
    app: FastAPI,
    amqp: aio_pika.abc.AbstractRobustConnection,
    amqp_as: AmqpAs,
    names: dict[str, Any],
    superuser: asyncpg.Connection,
    ingest_queue: str,
) -> None:
    await parked(amqp, ingest_queue)  # start from an empty dead-letter queue
    before, after = event(), event()
    unstorable = json.dumps(event()).replace('"n": 1', '"n": "nul \\u0000 inside"').encode()
    not_a_cloudevent = json.dumps({"hello": "world"}).encode()
    wrong_type = json.dumps({**event(), "type": "NotOurs"}).encode()
    await publish(amqp_as, names, [before, b"{this is not json", not_a_cloudevent, wrong_type, unstorable, after])
    await wait_stored(superuser, [before["id"], after["id"]])

    async def four_parked() -> list[aio_pika.abc.AbstractIncomingMessage]:
        got.extend(await parked(amqp, ingest_queue))
        return got if len(got) >= 4 else []

    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    dead = await eventually(four_parked, timeout=15, what="4 parked messages")
    bodies = {m.body: header(m, "x-itsm-error") for m in dead}
    assert bodies[b"{this is not json"].startswith("not JSON")
    assert "specversion" in bodies[not_a_cloudevent]
    assert bodies[wrong_type].startswith("not a valid event: type")
    assert bodies[unstorable].startswith("not storable as JSON")
    assert {header(m, "x-itsm-queue") for m in dead} == {ingest_queue}
    await assert_chain_is_gap_free(superuser)


# ---------------------------------------------------------------- PostgreSQL goes away


def _local_cluster(url: str) -> tuple[str, str] | None:
    """(version, name) of the local cluster serving `url`, from pg_lsclusters; None when there is none."""
    parsed = make_url(url)
    if parsed.host not in (None, "127.0.0.1", "localhost", "::1"):
        return None
    try:
        listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == str(parsed.port or 5432) and fields[3] == "online":
            return fields[0], fields[1]
    return None


def _pg_ctl(cluster: tuple[str, str], action: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, action],
        check=True,
        capture_output=True,
        timeout=120,
    )


async def _accepts_connections(url: str) -> bool:
    try:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


async def test_a_postgresql_outage_loses_nothing_and_parks_nothing(
    app: FastAPI,
    amqp: aio_pika.abc.AbstractRobustConnection,
    amqp_as: AmqpAs,
    names: dict[str, Any],
    database: Database,
    ingest_queue: str,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Stop the local PostgreSQL cluster for 30 s while events keep arriving, start it again: every event is
    stored exactly once, none is parked, the chain holds. The cluster is started again whatever happens."""
    cluster = _local_cluster(database.admin_url)
    if cluster is None:
        pytest.skip("needs a local PostgreSQL cluster managed by pg_ctlcluster")
    await parked(amqp, ingest_queue)
    subject = str(uuid.uuid4())
    published: list[str] = []
    flowing = True

    async def produce() -> None:
        while flowing:
            e = event("incident.updated", subject=subject)
            await publish(amqp_as, names, [e])
            published.append(e["id"])
            await asyncio.sleep(0.05)

    producer = asyncio.create_task(produce())
    try:
        await eventually(lambda: _count(published, 20), timeout=15, what="events flowing")
        await asyncio.to_thread(_pg_ctl, cluster, "stop")
        try:
            assert not await _accepts_connections(database.admin_url)
            during = len(published)
            await asyncio.sleep(OUTAGE_SECONDS)
            assert len(published) - during >= OUTAGE_SECONDS * 10, "events kept flowing during the outage"
        finally:
            await asyncio.to_thread(_pg_ctl, cluster, "start")
        await eventually(lambda: _accepts_connections(database.admin_url), timeout=60, what="PostgreSQL back")
        await asyncio.sleep(2)  # and a little more flow after the restart
    finally:
        flowing = False
        await producer
    conn = await asyncpg.connect(asyncpg_dsn(database.admin_url))
    try:
        await conn.execute("SET search_path TO audit")
        found = await wait_stored(conn, published, timeout=60)
        assert found == dict.fromkeys(published, 1)
        assert await conn.fetchval("SELECT count(*) FROM audit_event WHERE subject = $1", subject) == len(published)
        await assert_chain_is_gap_free(conn)
    finally:
        await conn.close()
    assert not [m for m in await parked(amqp, ingest_queue) if m.message_id in set(published)]
    assert (await verify_chain(sessions, full=True, chunk=5000)).ok


async def _count(items: list[str], at_least: int) -> bool:
    return len(items) >= at_least
