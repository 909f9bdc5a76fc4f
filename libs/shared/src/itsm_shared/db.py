"""Async engine and sessions. One engine per process, built from the service's settings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from itsm_shared.errors import DomainError
from itsm_shared.settings import asyncpg_dsn as asyncpg_dsn  # where it always was, for its many users


def async_url(url: str) -> str:
    """Accept plain postgresql:// URLs from operators; SQLAlchemy needs the asyncpg driver named."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+asyncpg")
    return u.render_as_string(hide_password=False)


def make_engine(url: str, *, pool_size: int = 20, statement_timeout_ms: int = 5000) -> AsyncEngine:
    # No pre-ping (a round trip before every transaction): a connection that died with the server fails its
    # request once (503, retry later) and SQLAlchemy then invalidates every connection of the pool.
    # No overflow: connections past the pool's size were opened and closed per burst, asyncpg's set-up each
    # time (4 % of the incident process under a create load; without them, 4 of 4 alternated runs had a lower
    # p99 and 3 of 4 a higher rate). The pool keeps up to `pool_size`, opened as needed; more requests wait.
    engine = create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=0,
        hide_parameters=True,  # a failing statement's values (a password hash, a key) never reach a log
        connect_args={"server_settings": {"statement_timeout": str(statement_timeout_ms)}},
    )
    event.listen(engine.sync_engine.pool, "checkout", _refuse_closed)
    return engine


def _refuse_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection the driver already knows is closed (PostgreSQL restarted, or ended its backend) is
    not handed out: SQLAlchemy's pool drops it and checks out another (its documented DisconnectionError). A
    local test, no round trip. SQLAlchemy finds such a connection itself at its first statement, but the hot
    paths' first statement goes to the driver's connection (driver_connection), where it failed the request."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the connection was closed by the server")


# Keys of `session.info`: a sole statement has committed; actions to run once the seam has committed.
_SOLE = "itsm_sole_statement"
_AFTER_COMMIT = "itsm_after_commit"


async def driver_connection(session: AsyncSession, *, sole: bool = False) -> Any:
    """The asyncpg connection under the session's transaction, for the statements of a hot path written in SQL
    (the write path's inserts): they run in the same transaction, which the seam commits. JSON parameters are
    passed as str (SQLAlchemy's codec on the connection).

    `sole=True`: the caller's statement is the last of its transaction. When it is also the first (the session
    has run nothing), no BEGIN is sent: PostgreSQL runs the statement in a transaction of its own and commits it,
    one round trip where BEGIN, statement and COMMIT are three. The seam then has nothing left to commit, and
    refuses to commit anything run after it (a RuntimeError: the sole statement has committed)."""
    fresh = not session.in_transaction()
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    adapter = raw.dbapi_connection
    # SQLAlchemy's asyncpg adapter sends BEGIN lazily, with its own first statement: begin now, or a statement
    # sent straight to asyncpg would run outside the session's transaction and commit on its own.
    if adapter is not None and adapter._transaction is None:
        if session.info.get(_SOLE):
            raise RuntimeError("a statement after its transaction's sole statement, which has committed")
        if sole and fresh:
            session.info[_SOLE] = adapter
        else:
            try:
                await adapter._start_transaction()
            except BaseException:
                # Interrupted once BEGIN was sent (a cancelled task): the adapter records a transaction only when
                # BEGIN has returned, so its rollback on the way back to the pool would do nothing, and the next
                # session would get a connection in a transaction nobody commits. Its writes would be lost while
                # their requests succeed. SQLAlchemy closes a connection so interrupted under its own statements.
                await connection.invalidate()
                raise
    return raw.driver_connection


async def read_connection(session: AsyncSession) -> AsyncConnection:
    """The session's Core connection, for a request that only reads. When the session has run nothing yet its
    statements run without BEGIN and COMMIT: under READ COMMITTED each statement reads a snapshot of its own
    inside a transaction as well, so one would add two round trips and nothing else. Never for a write."""
    if session.in_transaction():
        return await session.connection()
    return await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def _ran_after_sole(session: AsyncSession) -> bool:
    """The session's sole statement (`driver_connection(sole=True)`) was followed by one that began a
    transaction (through SQLAlchemy, which sends BEGIN with its first statement), or by ORM changes that the
    commit would flush in a transaction of their own."""
    if session.new or session.dirty or session.deleted:
        return True
    return session.info[_SOLE]._transaction is not None


def after_commit(session: AsyncSession, action: Callable[[], None]) -> None:
    """Run `action` (once, however often it is asked for) after the seam has committed the session's
    transaction; never after a rollback. The outbox wakes its relays so (itsm_shared.outbox)."""
    session.info.setdefault(_AFTER_COMMIT, {})[action] = None


async def _commit(session: AsyncSession) -> None:
    if session.info.get(_SOLE):
        if _ran_after_sole(session):
            await session.rollback()
            raise RuntimeError("a statement after its transaction's sole statement, which has committed")
        # Nothing to commit: the sole statement committed by itself, and SQLAlchemy's commit of an empty
        # transaction would cost more than the rest of the seam (the session's close ends it).
    else:
        await session.commit()
    for action in session.info.pop(_AFTER_COMMIT, {}):
        action()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@contextlib.asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """The one seam that commits (ARCHITECTURE.md rule 3): a request, a consumed event and a scheduler pass each
    run their use cases inside one of these. It commits when the block ends normally and rolls back when it
    raises, except for an error that says its writes stand (`DomainError.keeps_writes`: a failed login is
    counted, and still refused). What `after_commit` asked for runs once the commit has returned."""
    async with sessions() as session:
        try:
            yield session
        except BaseException as exc:
            if isinstance(exc, DomainError) and exc.keeps_writes:
                await _commit(session)
            else:
                session.info.pop(_AFTER_COMMIT, None)
                await session.rollback()
            raise
        await _commit(session)


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with transaction(request.app.state.sessions) as session:
        yield session


# scope="function": the dependency's exit (the commit) runs when the endpoint returns, before the response is
# sent, so a client never sees a success whose transaction then fails to commit.
SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]
