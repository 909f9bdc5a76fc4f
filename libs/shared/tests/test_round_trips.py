"""Statements without BEGIN and COMMIT round trips (issue #10): `driver_connection(sole=True)`, a transaction of one
statement, after which the seam refuses to commit anything; `read_connection`, a request that only reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from itsm_shared.db import driver_connection, make_engine, read_connection, session_factory, transaction
from itsm_shared.models import OutboxMessage
from itsm_shared.settings import ServiceSettings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

pytestmark = pytest.mark.usefixtures("clean_outbox")


def insert(n: int) -> str:
    """A row of a table the service's role writes (the outbox: no relay runs in these tests)."""
    return f"INSERT INTO outbox (id, routing_key, payload) VALUES (gen_random_uuid(), 'sole.{n}', '{{}}')"


async def stored(engine: AsyncEngine) -> list[int]:
    """What another connection sees committed."""
    async with engine.connect() as connection:
        keys = await connection.execute(text("SELECT routing_key FROM outbox ORDER BY routing_key"))
        return [int(key.removeprefix("sole.")) for (key,) in keys]


async def test_a_first_and_sole_statement_commits_by_itself(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    async with transaction(sessions) as session:
        connection = await driver_connection(session, sole=True)
        assert connection.is_in_transaction() is False  # no BEGIN was sent
        await connection.execute(insert(1))
        assert await stored(engine) == [1], "committed before the seam's commit: its own transaction"
    assert await stored(engine) == [1]


async def write_then_fail(
    sessions: async_sessionmaker[AsyncSession], then: Callable[[AsyncSession], Awaitable[None]]
) -> None:
    """In one transaction of the seam: a write through SQLAlchemy (which sends BEGIN), `then`, and an error."""

    async def run() -> None:
        async with transaction(sessions) as session:
            await session.execute(text(insert(1)))
            await then(session)
            raise RuntimeError("undone")

    with pytest.raises(RuntimeError, match="undone"):
        await run()


async def test_sole_after_another_statement_stays_in_the_transaction(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    async def sole(session: AsyncSession) -> None:
        connection = await driver_connection(session, sole=True)
        assert connection.is_in_transaction()
        await connection.execute(insert(2))
        assert await stored(engine) == []

    await write_then_fail(sessions, sole)
    assert await stored(engine) == [], "both statements rolled back together"


async def sqlalchemy_statement(session: AsyncSession) -> None:
    await session.execute(text(insert(2)))


async def driver_statement(session: AsyncSession) -> None:
    await (await driver_connection(session)).execute(insert(2))


async def orm_change(session: AsyncSession) -> None:
    session.add(OutboxMessage(id=uuid.uuid4(), routing_key="sole.2", payload={}))


@pytest.mark.parametrize("after", [sqlalchemy_statement, driver_statement, orm_change])
async def test_the_seam_refuses_anything_after_the_sole_statement(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, after: Callable[[AsyncSession], Awaitable[None]]
) -> None:
    async def sole_then_after() -> None:
        async with transaction(sessions) as session:
            connection = await driver_connection(session, sole=True)
            await connection.execute(insert(1))
            await after(session)

    with pytest.raises(RuntimeError, match="after its transaction's sole statement"):
        await sole_then_after()
    assert await stored(engine) == [1], "what came after is not committed on its own"


async def test_a_reading_session_sends_no_begin(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with transaction(sessions) as session:
        connection = await read_connection(session)
        assert (await connection.execute(text("SELECT count(*) FROM outbox"))).scalar() == 0
        raw = await connection.get_raw_connection()
        assert raw.driver_connection.is_in_transaction() is False


async def test_read_connection_keeps_a_transaction_already_begun(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    async def read(session: AsyncSession) -> None:
        connection = await read_connection(session)
        assert (await connection.execute(text("SELECT count(*) FROM outbox"))).scalar() == 1
        assert (await connection.get_raw_connection()).driver_connection.is_in_transaction()

    await write_then_fail(sessions, read)
    assert await stored(engine) == []


@pytest.mark.parametrize("sole", [True, False])
async def test_a_task_cancelled_during_begin_leaves_no_transaction_open_for_the_next(
    settings: ServiceSettings, engine: AsyncEngine, sole: bool
) -> None:
    """A task cancelled while `driver_connection`'s BEGIN is on the wire (a consumer stopping, a request dropped).
    The server runs the BEGIN; the adapter, which records a transaction once BEGIN has returned, does not know of
    it. Returned to the pool so, the connection gave the next session a transaction nobody committed: its sole
    statement, or its whole transaction (a savepoint inside the stale one), vanished while it reported success."""
    one = make_engine(settings.database_url, pool_size=1)  # the next session gets the same connection, if pooled
    sessions = session_factory(one)
    try:
        async with one.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection

        async def interrupted() -> None:
            async with transaction(sessions) as session:
                await driver_connection(session)
                raise AssertionError("cancelled before BEGIN returned")

        task = asyncio.create_task(interrupted())
        for _ in range(100_000):  # asyncpg marks its transaction just before it sends BEGIN
            if driver._top_xact is not None:
                break
            await asyncio.sleep(0)
        else:
            pytest.fail("BEGIN was never sent")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async with transaction(sessions) as session:
            await (await driver_connection(session, sole=sole)).execute(insert(1))
        assert await stored(engine) == [1], "the next session's write committed"
    finally:
        await one.dispose()
