"""Batch consumption (itsm_shared.batches) on the real broker and the real database: many messages per
transaction, duplicates skipped through the inbox, a poison message parked while the rest of its batch commits,
a database outage retried in place, and acknowledgements only after the commit (a consumer killed between the
two leaves redeliveries that change nothing)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from faststream.rabbit import RabbitBroker
from itsm_shared.batches import (
    AFTER_COMMIT,
    Applied,
    BatchConsumer,
    Duplicate,
    Rejected,
    cloud_events,
)
from itsm_shared.broker import declare_dead_letter_queue, declare_topology, event_queue, make_broker
from itsm_shared.db import async_url, asyncpg_dsn, driver_connection, session_factory
from itsm_shared.events import CloudEvent, new_event
from itsm_shared.group_commit import Acker
from itsm_shared.inbox import PermanentError, claim_all
from itsm_shared.settings import ServiceSettings
from itsm_shared.testing import TestDatabase as Database
from itsm_shared.testing import eventually
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from .batch_worker import event_id, record_events
from .test_inbox import encoded, header, parked, parked_count, publish, queue_name

Event = CloudEvent[dict[str, Any]]
Handle = Callable[[AsyncSession, Sequence[Event]], Awaitable[Sequence[object] | None]]
WORKER = Path(__file__).with_name("batch_worker.py")


class Consumed:
    """What a consumer settled: (event name, outcome, how it was settled), in order."""

    def __init__(self) -> None:
        self.settled: list[tuple[object, str]] = []

    def __call__(self, outcome: object, settled: str) -> None:
        self.settled.append((outcome, settled))

    def count(self, kind: type, settled: str = "acked") -> int:
        return sum(1 for outcome, how in self.settled if isinstance(outcome, kind) and how == settled)


Start = Callable[..., Awaitable[tuple[BatchConsumer[Event], Consumed]]]


@pytest.fixture
async def batch_consumers(
    settings: ServiceSettings,
    sessions: async_sessionmaker[AsyncSession],
    amqp: AbstractRobustConnection,
) -> AsyncIterator[Start]:
    """Start a batch consumer the way a service does (declared on its broker, topology, dead-letter queue, broker
    started, then consuming on its own channel); stopped, and its queues deleted, at the end."""
    running: list[tuple[RabbitBroker, asyncio.Task[None]]] = []
    queues: set[str] = set()

    async def start(
        queue: str,
        routing_key: str,
        handle: Handle,
        *,
        with_sessions: async_sessionmaker[AsyncSession] | None = None,
        **options: Any,
    ) -> tuple[BatchConsumer[Event], Consumed]:
        broker = make_broker(settings)
        consumed = Consumed()
        consumer: BatchConsumer[Event] = BatchConsumer(
            settings=settings,
            broker=broker,
            sessions=with_sessions or sessions,
            queue=queue,
            routing_key=routing_key,
            parse=cloud_events(Event),
            handle=handle,
            event_id=event_id,
            observe=consumed,
            **options,
        )
        consumer.declare()
        await broker.connect()
        await declare_topology(broker, settings)
        await declare_dead_letter_queue(broker, settings, consumer.queue)
        await broker.start()  # declares and binds the queue
        running.append((broker, asyncio.create_task(consumer.run())))
        queues.add(consumer.queue)
        return consumer, consumed

    yield start
    for broker, task in running:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await broker.stop()
    cleanup = await amqp.channel()
    for queue in queues:
        await cleanup.queue_delete(queue)
        await cleanup.queue_delete(f"{queue}.dlq")
    await cleanup.close()


def named(names: dict[str, Any], what: str, n: int, **data: Any) -> dict[str, Any]:
    """An event whose effect is a user_account row called `<what>-<run>-<n>` (or `data["name"]`)."""
    body = {"name": f"{what}-{names['run']}-{n}", **data}
    return new_event(service="shared", type=f"{what}.created", subject=None, data=body)


async def publish_all(channel: AbstractChannel, settings: ServiceSettings, events: Sequence[dict[str, Any]]) -> None:
    for e in events:
        await publish(channel, settings, encoded(e), e["type"].removeprefix("itsm."), message_id=e["id"])


async def effects(sessions: async_sessionmaker[AsyncSession], names: Sequence[str]) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(
            text("SELECT username, count(*) FROM user_account WHERE username = ANY(:n) GROUP BY username"),
            {"n": list(names)},
        )
        return {r[0]: r[1] for r in rows}


async def all_applied(
    sessions: async_sessionmaker[AsyncSession], names: Sequence[str], timeout: float = 15
) -> dict[str, int]:
    async def there() -> dict[str, int] | None:
        found = await effects(sessions, names)
        return found if len(found) == len(names) else None

    return await eventually(there, timeout=timeout, what=f"{len(names)} effects")


async def in_inbox(sessions: async_sessionmaker[AsyncSession], consumer: str, ids: Sequence[str]) -> int:
    async with sessions() as session:
        count = await session.scalar(
            text("SELECT count(*) FROM inbox WHERE consumer = :c AND event_id = ANY(CAST(:ids AS uuid[]))"),
            {"c": consumer, "ids": list(ids)},
        )
    return int(count or 0)


# ---------------------------------------------------------------- acknowledgements and claims


class FakeChannel:
    is_closed = False


class FakeDelivery:
    def __init__(self, channel: FakeChannel, tag: int, acks: list[tuple[int, bool]]) -> None:
        self.channel, self.delivery_tag, self._acks = channel, tag, acks

    async def ack(self, multiple: bool = False) -> None:
        self._acks.append((self.delivery_tag, multiple))


async def test_acks_cover_only_settled_prefixes_and_never_a_tag_settled_otherwise() -> None:
    acks: list[tuple[int, bool]] = []
    channel, acker = FakeChannel(), Acker()
    deliveries = [FakeDelivery(channel, tag, acks) for tag in range(1, 7)]
    for d in deliveries:
        acker.delivered(d)  # type: ignore[arg-type]
    for tag in (2, 3):
        acker.settle(deliveries[tag - 1])  # type: ignore[arg-type]
    await acker.flush()
    assert acks == []  # 1 is still in flight: acking 3 "multiple" would take it along
    acker.settle(deliveries[0])  # type: ignore[arg-type]
    await acker.flush()
    assert acks == [(3, True)]
    acker.settle(deliveries[4], acknowledge=False)  # type: ignore[arg-type]  # e.g. returned to the queue
    acker.settle(deliveries[3])  # type: ignore[arg-type]
    await acker.flush()
    assert acks == [(3, True), (4, True)]  # not 5: it is no longer the broker's to acknowledge
    acker.settle(deliveries[5])  # type: ignore[arg-type]
    await acker.flush()
    assert acks == [(3, True), (4, True), (6, True)]
    other = FakeChannel()  # tags are per channel: a reconnect starts again at 1
    acker.delivered(FakeDelivery(other, 1, acks))  # type: ignore[arg-type]
    channel.is_closed = True
    await acker.flush()
    assert acks == [(3, True), (4, True), (6, True)]


async def test_claim_all_returns_only_the_unseen_ids_in_one_statement(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    seen, new = uuid.uuid4(), [uuid.uuid4() for _ in range(3)]
    async with sessions() as session, session.begin():
        assert await claim_all(session, "batch-claim", [seen]) == {seen}
    async with sessions() as session, session.begin():
        assert await claim_all(session, "batch-claim", [new[0], seen, new[1], new[0], new[2]]) == set(new)
        assert await claim_all(session, "batch-claim-other", [seen]) == {seen}  # each consumer its own inbox
    async with sessions() as session:
        assert await claim_all(session, "batch-claim", [seen, *new]) == set()
        assert await claim_all(session, "batch-claim", []) == set()


# ---------------------------------------------------------------- on the real broker


async def test_a_batch_commits_once_and_duplicates_are_skipped(
    batch_consumers: Start,
    channel: AbstractChannel,
    publisher: AbstractChannel,
    settings: ServiceSettings,
    sessions: async_sessionmaker[AsyncSession],
    names: dict[str, Any],
) -> None:
    queue = queue_name(names, "batched")
    sizes: list[int] = []

    async def handle(session: AsyncSession, events: Sequence[Event]) -> None:
        sizes.append(len(events))
        await record_events(session, events)

    _, consumed = await batch_consumers(queue, "batched.*", handle, max_batch=25, max_wait=0.3)
    events = [named(names, "batched", n) for n in range(40)]
    await publish_all(publisher, settings, events + events[:10])  # the first ten twice, in later batches
    await publish_all(publisher, settings, [events[20]] * 2)  # and one twice more, back to back
    wanted = [e["data"]["name"] for e in events]
    found = await all_applied(sessions, wanted)
    await eventually(lambda: _settled(consumed, 52), what="every delivery settled")
    await asyncio.sleep(0.3)
    assert await effects(sessions, wanted) == found == dict.fromkeys(wanted, 1)
    assert (consumed.count(Applied), consumed.count(Duplicate)) == (40, 12)
    assert max(sizes) > 1, "more than one event per transaction"
    assert sum(sizes) == 40  # duplicates never reach the handler
    assert await in_inbox(sessions, queue, [e["id"] for e in events]) == 40
    assert await parked_count(channel, queue) == 0


async def _settled(consumed: Consumed, count: int) -> bool:
    return len(consumed.settled) >= count


async def test_a_poison_message_is_parked_while_the_rest_of_its_batch_commits(
    batch_consumers: Start,
    channel: AbstractChannel,
    publisher: AbstractChannel,
    settings: ServiceSettings,
    sessions: async_sessionmaker[AsyncSession],
    names: dict[str, Any],
) -> None:
    """Three kinds of poison in one batch: a value PostgreSQL refuses (the transaction aborts: found by halving the
    batch in savepoints; returned to the queue until the delivery limit, then parked), a `PermanentError` (parked
    at once), and a `Rejected` outcome (parked at once). The rest of the batch commits, each event once."""
    queue = queue_name(names, "poison")
    calls: list[list[str]] = []

    async def handle(session: AsyncSession, events: Sequence[Event]) -> list[object]:
        calls.append([e.data["name"] for e in events])
        if any(e.data.get("permanent") for e in events):
            raise PermanentError("refers to nothing we know")
        outcomes: list[object] = [Rejected("not ours") if e.data.get("reject") else Applied() for e in events]
        await record_events(session, [e for e, o in zip(events, outcomes, strict=True) if isinstance(o, Applied)])
        return outcomes

    _, consumed = await batch_consumers(queue, "poison.*", handle, max_batch=50, max_wait=0.5)
    good = [named(names, "poison", n) for n in range(12)]
    too_long = named(names, "poison", 99, name="x" * 100)  # user_account.username is varchar(64)
    permanent = named(names, "poison", 98, permanent=True)
    rejected = named(names, "poison", 97, reject=True)
    await publish_all(publisher, settings, [*good[:4], too_long, *good[4:8], permanent, *good[8:], rejected])
    wanted = [e["data"]["name"] for e in good]
    await all_applied(sessions, wanted)
    dead = {m.message_id: m for m in await parked(channel, queue, 3)}
    assert set(dead) == {too_long["id"], permanent["id"], rejected["id"]}
    assert "value too long" in header(dead[too_long["id"]], "x-itsm-error")
    assert header(dead[permanent["id"]], "x-itsm-error") == "PermanentError: refers to nothing we know"
    assert header(dead[rejected["id"]], "x-itsm-error") == "not ours"
    assert header(dead[too_long["id"]], "x-itsm-queue") == queue
    assert await effects(sessions, wanted) == dict.fromkeys(wanted, 1)
    assert len(calls[0]) == 15, "all of them arrived in one batch"
    alone = [c for c in calls if len(c) == 1]
    assert alone.count([permanent["data"]["name"]]) == 1  # parked on its first delivery
    assert alone.count([too_long["data"]["name"]]) >= settings.consumer_delivery_limit - 1  # retried, then parked
    assert consumed.count(Applied) == 12
    # Parked, not consumed: their inbox claims rolled back (or were taken back), so a replay would be seen.
    assert await in_inbox(sessions, queue, [too_long["id"], permanent["id"], rejected["id"]]) == 0
    await asyncio.sleep(0.3)
    extra = await parked(channel, queue, 0)
    assert not extra, [(m.message_id, m.headers) for m in extra]  # nothing parked twice


async def test_invalid_messages_are_parked_and_the_batch_goes_on(
    batch_consumers: Start,
    channel: AbstractChannel,
    publisher: AbstractChannel,
    settings: ServiceSettings,
    sessions: async_sessionmaker[AsyncSession],
    names: dict[str, Any],
) -> None:
    queue = queue_name(names, "invalid")
    await batch_consumers(queue, "invalid.*", record_events, max_batch=10, max_wait=0.2)
    good = [named(names, "invalid", n) for n in range(3)]
    await publish(publisher, settings, b"{not json", "invalid.created", message_id="bad-1")
    await publish_all(publisher, settings, good)
    await all_applied(sessions, [e["data"]["name"] for e in good])
    (dead,) = await parked(channel, queue, 1)
    assert dead.message_id == "bad-1" and dead.body == b"{not json"
    assert header(dead, "x-itsm-error").startswith("not a valid event")


class Outage:
    """The database as one client sees it: connections it holds are cut, new ones refused, until it is back."""

    def __init__(self, url: str, name: str) -> None:
        self.dsn, self.name, self.down = asyncpg_dsn(url), name, False

    async def connect(self) -> asyncpg.Connection:
        if self.down:
            raise ConnectionRefusedError("the database is down (test)")
        return await asyncpg.connect(self.dsn, server_settings={"application_name": self.name})


async def test_a_database_outage_is_retried_in_place_without_losing_or_duplicating(
    batch_consumers: Start,
    channel: AbstractChannel,
    publisher: AbstractChannel,
    settings: ServiceSettings,
    sessions: async_sessionmaker[AsyncSession],
    database: Database,
    names: dict[str, Any],
) -> None:
    """Longer than the delivery limit allows if outages spent deliveries, and still nothing parked or redelivered."""
    queue = queue_name(names, "outage")
    outage = Outage(settings.database_url, f"itsm-batch-outage-{names['run']}")
    engine = create_async_engine(async_url(settings.database_url), async_creator=outage.connect, pool_size=2)
    try:
        _, consumed = await batch_consumers(
            queue, "outage.*", record_events, with_sessions=session_factory(engine), retry_max_seconds=0.3
        )
        before = [named(names, "outage", n) for n in range(5)]
        await publish_all(publisher, settings, before)
        await all_applied(sessions, [e["data"]["name"] for e in before])
        outage.down = True
        admin = await asyncpg.connect(asyncpg_dsn(database.admin_url))
        try:  # cut the connections the consumer's pool holds
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", outage.name
            )
        finally:
            await admin.close()
        during = [named(names, "outage", n) for n in range(5, 25)]
        await publish_all(publisher, settings, during)
        await asyncio.sleep(3)  # retried in place meanwhile, at most 0.3 s apart
        assert await effects(sessions, [e["data"]["name"] for e in during]) == {}
        assert (REGISTRY.get_sample_value("itsm_consumer_batch_retries_total", {"queue": queue}) or 0) >= 3
        outage.down = False
        wanted = [e["data"]["name"] for e in before + during]
        await all_applied(sessions, wanted)
        await asyncio.sleep(0.3)
        assert await effects(sessions, wanted) == dict.fromkeys(wanted, 1)
        assert consumed.count(Applied) == 25 and consumed.count(Duplicate) == 0
        assert not [how for _, how in consumed.settled if how != "acked"]
        assert await parked_count(channel, queue) == 0
    finally:
        await engine.dispose()


async def test_a_connection_lost_under_the_drivers_own_statement_is_retried_in_place(
    batch_consumers: Start,
    channel: AbstractChannel,
    publisher: AbstractChannel,
    settings: ServiceSettings,
    sessions: async_sessionmaker[AsyncSession],
    names: dict[str, Any],
) -> None:
    """A handler's statement on the driver's own connection (webhook's fan-out) that loses its connection fails with
    asyncpg's own error, which `inbox.is_transient` does not know; the seam's rollback on the closed connection then
    fails with SQLAlchemy's, which it does: retried in place, and a batch of one message spends no delivery on it
    (with batches not retried on transient errors, it is returned to the queue: run)."""
    queue = queue_name(names, "driver")
    cut: list[str] = []

    async def cut_once_then_record(session: AsyncSession, events: Sequence[Event]) -> None:
        if not cut:
            cut.append("cut")
            connection = await driver_connection(session)
            await connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")  # the server ends it
        await record_events(session, events)

    _, consumed = await batch_consumers(queue, "driver.*", cut_once_then_record, retry_max_seconds=0.3)
    event = named(names, "driver", 0)
    await publish_all(publisher, settings, [event])
    await all_applied(sessions, [event["data"]["name"]])
    await asyncio.sleep(0.3)
    assert cut == ["cut"]
    assert consumed.settled and all(how == "acked" for _, how in consumed.settled), consumed.settled
    assert consumed.count(Applied) == 1
    assert (REGISTRY.get_sample_value("itsm_consumer_batch_retries_total", {"queue": queue}) or 0) >= 1
    assert await parked_count(channel, queue) == 0


async def test_killed_between_commit_and_ack_the_redeliveries_change_nothing(
    batch_consumers: Start,
    broker: RabbitBroker,
    channel: AbstractChannel,
    publisher: AbstractChannel,
    settings: ServiceSettings,
    sessions: async_sessionmaker[AsyncSession],
    names: dict[str, Any],
) -> None:
    """A consumer process SIGKILLed right after its first batch committed, before acknowledging it: the broker
    redelivers that batch to the next consumer, which finds every event in the inbox and does nothing again."""
    queue = queue_name(names, "killed")
    declared = await broker.declare_queue(event_queue(settings, queue, "killed.*"))
    await declared.bind(settings.exchange, routing_key="killed.*")
    await declare_dead_letter_queue(broker, settings, queue)
    events = [named(names, "killed", n) for n in range(30)]
    await publish_all(publisher, settings, events)
    env = {
        **os.environ,
        "ITSM_DATABASE_URL": settings.database_url,
        "ITSM_AMQP_URL": settings.amqp_url,
        "ITSM_BROKER_USER_PREFIX": settings.broker_user_prefix,
        "ITSM_EXCHANGE": settings.exchange,
        "ITSM_DEAD_LETTER_EXCHANGE": settings.dead_letter_exchange,
        "ITSM_CONSUMER_DELIVERY_LIMIT": str(settings.consumer_delivery_limit),
        "ITSM_FAULT_POINT": AFTER_COMMIT,
    }
    worker = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(WORKER), queue, "killed.*", "10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == -9, worker.stderr
    wanted = [e["data"]["name"] for e in events]
    first = await effects(sessions, wanted)
    assert list(first.values()) == [1] * 10, "the first batch of ten committed, the rest not yet"
    assert await in_inbox(sessions, queue, [e["id"] for e in events]) == 10

    _, consumed = await batch_consumers(queue, "killed.*", record_events, max_batch=10, max_wait=0.2)
    await all_applied(sessions, wanted)
    await eventually(lambda: _settled(consumed, 30), what="every redelivery settled")
    await asyncio.sleep(0.3)
    assert await effects(sessions, wanted) == dict.fromkeys(wanted, 1)
    assert (consumed.count(Duplicate), consumed.count(Applied)) == (10, 20)
    assert await parked_count(channel, queue) == 0
