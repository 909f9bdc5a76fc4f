"""The transactional outbox and its relay, against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from faststream.rabbit import RabbitBroker
from itsm_shared.broker import declare_topology, unrouted_name
from itsm_shared.db import transaction
from itsm_shared.models import OutboxMessage
from itsm_shared.outbox import append
from itsm_shared.relay import OutboxRelay
from itsm_shared.settings import ServiceSettings
from itsm_shared.testing import EventProbe, Listen, eventually
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from .support import append_committed, event, relay_connections

pytestmark = pytest.mark.usefixtures("clean_outbox")


async def rows(sessions: async_sessionmaker[AsyncSession], *ids: str) -> list[OutboxMessage]:
    async with sessions() as session:
        stmt = select(OutboxMessage)
        if ids:
            stmt = stmt.where(col(OutboxMessage.id).in_([uuid.UUID(i) for i in ids]))
        return list((await session.exec(stmt)).all())


async def all_published(sessions: async_sessionmaker[AsyncSession], *ids: str) -> bool:
    found = await rows(sessions, *ids)
    return len(found) == len(ids) and all(r.published_at is not None for r in found)


def message_ids(probe: EventProbe) -> list[str]:
    """The AMQP message ids the probe received (the relay sets each to its event's id)."""
    return [m.message_id or "" for m in probe.messages]


def count_publishes(relay: OutboxRelay) -> list[str]:
    """Instrument one relay (not the broker): the ids it published and had confirmed."""
    done: list[str] = []
    publish = relay._publish

    async def counted(channel: Any, row: Any) -> None:
        await publish(channel, row)
        done.append(str(row["id"]))

    relay._publish = counted  # type: ignore[method-assign]
    return done


async def test_rolled_back_append_leaves_no_row_and_no_message(
    sessions: async_sessionmaker[AsyncSession],
    listen: Listen,
    relays: Callable[..., OutboxRelay],
) -> None:
    listener = await listen("rollback.*")
    relays()
    doomed = event("rollback.created", n=1)
    async with sessions() as session:
        await session.begin()
        await append(session, doomed)
        await session.flush()  # the row really reached the database inside the transaction
        assert (await session.scalar(text("SELECT count(*) FROM outbox"))) == 1
        await session.rollback()
    # A committed marker afterwards: once it is out, the relay has had every chance to publish the doomed one.
    marker = event("rollback.marker")
    await append_committed(sessions, marker)
    await listener.wait(count=1)
    assert await rows(sessions, doomed["id"]) == []
    assert message_ids(listener) == [marker["id"]]


async def test_appends_flushed_together_commit(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Several events reaching one INSERT (here: autoflush off) must commit, with UUID ids as the column says."""
    events = [event("batched.created", n=n) for n in range(3)]
    async with sessions() as session:
        with session.no_autoflush:
            for e in events:
                await append(session, e)
        await session.commit()
    found = await rows(sessions, *[e["id"] for e in events])
    assert sorted(str(r.id) for r in found) == sorted(e["id"] for e in events)
    assert {r.routing_key for r in found} == {"batched.created"}
    assert all(isinstance(r.id, uuid.UUID) for r in found)


async def test_committed_append_is_published_once_and_marked(
    sessions: async_sessionmaker[AsyncSession],
    listen: Listen,
    relays: Callable[..., OutboxRelay],
) -> None:
    listener = await listen("committed.*")
    relay = relays()
    first, second = event("committed.created", n=1), event("committed.updated", n=2)
    await append_committed(sessions, first, second)
    await eventually(lambda: all_published(sessions, first["id"], second["id"]), what="rows marked published")
    await listener.wait(count=2)
    # More relay passes must not publish a marked row again.
    for _ in range(3):
        assert await relay.publish_batch() == 0
    assert sorted(message_ids(listener)) == sorted([first["id"], second["id"]])
    for row in await rows(sessions, first["id"], second["id"]):
        assert row.attempts == 0
        assert row.last_error is None
        assert row.created_at is not None
        assert row.published_at is not None
        assert row.published_at >= row.created_at


async def test_a_commit_wakes_the_relay_without_waiting_for_the_sweep(
    sessions: async_sessionmaker[AsyncSession],
    settings: ServiceSettings,
    listen: Listen,
    relays: Callable[..., OutboxRelay],
) -> None:
    listener = await listen("woken.*")
    relay = relays(relay_settings=settings.model_copy(update={"outbox_sweep_seconds": 30.0}))
    await eventually(lambda: relay_connections(sessions), what="the relay's connection")
    await asyncio.sleep(0.3)  # the relay's first pass is over: the next one is 30 s away unless it is woken
    passes = count_passes(relay)
    # Each event must arrive within 5 s, so only the seam's wake after the commit can have published it.
    for n in range(1, 4):
        await append_committed(sessions, event("woken.created", n=n))
        await listener.wait(count=n, timeout=5.0)
    assert len(passes) >= 3


async def test_a_rolled_back_transaction_does_not_wake_the_relay(
    sessions: async_sessionmaker[AsyncSession],
    settings: ServiceSettings,
    relays: Callable[..., OutboxRelay],
) -> None:
    relay = relays(relay_settings=settings.model_copy(update={"outbox_sweep_seconds": 30.0}))
    await eventually(lambda: relay_connections(sessions), what="the relay's connection")
    await asyncio.sleep(0.3)
    passes = count_passes(relay)
    with pytest.raises(RuntimeError, match="abandoned"):
        await append_then_fail(sessions)
    await asyncio.sleep(0.5)
    assert passes == []
    assert await rows(sessions) == []


async def append_then_fail(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with transaction(sessions) as session:
        await append(session, event("abandoned.created"))
        raise RuntimeError("abandoned")


def count_passes(relay: OutboxRelay) -> list[int]:
    """Instrument one relay: the rows each pass it makes from now on published."""
    made: list[int] = []
    publish_batch = relay.publish_batch

    async def counted() -> int:
        published = await publish_batch()
        made.append(published)
        return published

    relay.publish_batch = counted  # type: ignore[method-assign]
    return made


async def test_relay_reconnects_after_losing_its_connection(
    sessions: async_sessionmaker[AsyncSession],
    settings: ServiceSettings,
    listen: Listen,
    relays: Callable[..., OutboxRelay],
) -> None:
    listener = await listen("reconnect.*")
    relays(relay_settings=settings.model_copy(update={"outbox_sweep_seconds": 30.0}))
    (first,) = await eventually(lambda: relay_connections(sessions), what="the relay's connection")
    async with sessions() as session:
        assert await session.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    for n in range(1, 3):
        await append_committed(sessions, event("reconnect.created", n=n))
        await listener.wait(count=n, timeout=5.0)
    assert [pid for pid in await relay_connections(sessions) if pid != first]


async def test_two_relays_publish_every_row_exactly_once(
    sessions: async_sessionmaker[AsyncSession],
    settings: ServiceSettings,
    listen: Listen,
    relays: Callable[..., OutboxRelay],
) -> None:
    listener = await listen("replicated.*")
    events = [event("replicated.created", n=n) for n in range(300)]
    for start in range(0, 300, 100):
        await append_committed(sessions, *events[start : start + 100])
    small_batches = settings.model_copy(update={"outbox_batch_size": 25})
    pair = [relays(relay_settings=small_batches), relays(relay_settings=small_batches)]
    published = [count_publishes(relay) for relay in pair]
    ids = [e["id"] for e in events]
    await eventually(lambda: all_published(sessions, *ids), timeout=30, what="all 300 rows published")
    await listener.wait(count=300, timeout=10)
    # Give a late duplicate the chance to show up before counting.
    await asyncio.sleep(0.5)
    seen = Counter(message_ids(listener))
    assert set(seen) == set(ids)
    assert [i for i, n in seen.items() if n != 1] == []
    assert len(listener.messages) == 300
    assert sorted(published[0] + published[1]) == sorted(ids)  # no row published by both
    assert all(published), "one relay did all the work: the test did not exercise SKIP LOCKED"


async def test_unreachable_broker_keeps_rows_and_a_working_relay_publishes_them_later(
    sessions: async_sessionmaker[AsyncSession],
    settings: ServiceSettings,
    listen: Listen,
    relays: Callable[..., OutboxRelay],
) -> None:
    listener = await listen("stranded.*")
    dead_settings = settings.model_copy(update={"amqp_url": "amqp://guest:guest@127.0.0.1:1/"})
    dead_relay = relays(relay_settings=dead_settings)
    stranded = [event("stranded.created", n=n) for n in range(3)]
    await append_committed(sessions, *stranded)
    ids = [e["id"] for e in stranded]

    async def all_failed() -> list[OutboxMessage] | None:
        found = await rows(sessions, *ids)
        return found if len(found) == 3 and all(r.attempts > 0 for r in found) else None

    failed = await eventually(all_failed, what="every stranded row to record a failed attempt")
    assert failed is not None
    for row in failed:
        assert row.published_at is None
        assert row.last_error
        assert row.next_attempt_at is not None
        assert row.created_at is not None
        assert row.next_attempt_at > row.created_at  # backed off, not retried in a hot loop
    await dead_relay.stop()
    assert listener.messages == []

    relays()  # a relay with a working broker, e.g. after the broker came back
    await eventually(lambda: all_published(sessions, *ids), timeout=20, what="stranded rows published")
    await listener.wait(count=3)
    assert sorted(message_ids(listener)) == sorted(ids)


async def test_event_nobody_listens_to_lands_in_the_unrouted_queue(
    sessions: async_sessionmaker[AsyncSession],
    settings: ServiceSettings,
    channel: AbstractChannel,
    broker: RabbitBroker,
    relays: Callable[..., OutboxRelay],
) -> None:
    await declare_topology(broker, settings)
    orphan = event("orphan.happened")
    await append_committed(sessions, orphan)
    relays()
    await eventually(lambda: all_published(sessions, orphan["id"]), what="the orphan marked published")

    unrouted = await channel.declare_queue(unrouted_name(settings), passive=True)
    found: list[AbstractIncomingMessage] = []

    async def fetched() -> bool:
        while (message := await unrouted.get(no_ack=True, fail=False)) is not None:
            if message.message_id == orphan["id"]:
                found.append(message)
        return bool(found)

    await eventually(fetched, what="the orphan in the unrouted queue")
    assert len(found) == 1
    assert found[0].routing_key == "orphan.happened"
    assert found[0].body.startswith(b"{")
