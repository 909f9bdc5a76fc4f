"""Database errors caused by input (issue #11, point 12): a value the database refuses as data (SQLSTATE class
22, or a parameter asyncpg cannot encode, such as an integer beyond the column's range) is the client's 422,
never a 500, and never a 503 that would send the client retrying the same bad value. The same on the hot paths'
statements sent to the driver's own connection (`driver_connection`), and there a connection the server ended is
a 503, and not handed out again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import APIRouter, FastAPI
from itsm_shared.app import ServiceSpec, create_app
from itsm_shared.db import SessionDep, asyncpg_dsn, driver_connection, make_engine, session_factory
from itsm_shared.errors import PROBLEM_JSON
from itsm_shared.settings import ServiceSettings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

router = APIRouter(prefix="/api/v1/data")


@router.get("/as-integer")
async def as_integer(session: SessionDep, value: int) -> dict[str, Any]:
    """An unbounded integer reaches an int4 parameter: asyncpg refuses to encode it (client side)."""
    found = (await session.execute(text("SELECT CAST(:v AS integer)"), {"v": value})).scalar_one()
    return {"value": found}


@router.get("/cast")
async def cast(session: SessionDep, value: str) -> dict[str, Any]:
    """A text the server cannot read as an integer: SQLSTATE 22P02 (invalid_text_representation)."""
    found = (await session.execute(text("SELECT CAST(CAST(:v AS text) AS integer)"), {"v": value})).scalar_one()
    return {"value": found}


@router.get("/too-long")
async def too_long(session: SessionDep, value: str) -> dict[str, Any]:
    """A text longer than its column: SQLSTATE 22001 (string_data_right_truncation)."""
    await session.execute(text("CREATE TEMPORARY TABLE IF NOT EXISTS short_text (v varchar(3))"))
    await session.execute(text("INSERT INTO short_text (v) VALUES (CAST(:v AS text))"), {"v": value})
    return {"value": value}


@router.get("/syntax")
async def syntax(session: SessionDep) -> None:
    """Not a data error: a bug of ours stays a 500."""
    await session.execute(text("SELEC 1"))


@router.get("/shutting-down")
async def shutting_down(session: SessionDep) -> None:
    """What a service meets while PostgreSQL stops or starts: SQLSTATE 57P03 (cannot_connect_now), raised by the
    server here so the test needs no outage."""
    await session.execute(
        text("DO $$ BEGIN RAISE EXCEPTION 'the database system is shutting down' USING ERRCODE = '57P03'; END $$")
    )


# The same statements on the driver's connection, as the hot paths send theirs.
DRIVER_STATEMENTS = {
    "as-integer": "SELECT $1::integer",
    "cast": "SELECT $1::text::integer",
    "shutting-down": "DO $$ BEGIN RAISE EXCEPTION 'the database system is shutting down' USING ERRCODE = '57P03'; END $$",
    "syntax": "SELEC 1",
}


@router.get("/driver/{name}")
async def on_the_driver(session: SessionDep, name: str, value: str = "") -> dict[str, Any]:
    connection = await driver_connection(session, sole=True)
    statement = DRIVER_STATEMENTS[name]
    arguments = [] if "$1" not in statement else [int(value) if name == "as-integer" else value]
    return {"value": await connection.fetchval(statement, *arguments)}


@router.get("/backend")
async def backend(session: SessionDep) -> dict[str, Any]:
    """The backend's pid, read on the driver's connection."""
    return {"pid": await (await driver_connection(session, sole=True)).fetchval("SELECT pg_backend_pid()")}


@router.get("/lost")
async def lost(session: SessionDep) -> None:
    """The server ends the connection in the middle of the request (as a restart does), on the driver's
    connection: the next statement finds it closed. No transaction is open, so nothing else (a rollback through
    SQLAlchemy) fails in its place."""
    connection = await driver_connection(session, sole=True)
    with contextlib.suppress(asyncpg.PostgresError, ConnectionError):
        await connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    await connection.fetchval("SELECT 1")


def build(settings: ServiceSettings, sessions: async_sessionmaker[AsyncSession]) -> FastAPI:
    spec = ServiceSpec(
        name="shared", title="Data errors", api_prefix="/api/v1/data", routers=[router], settings=settings
    )
    application = create_app(spec)
    application.state.sessions = sessions
    return application


@pytest.fixture(scope="module")
def app(settings: ServiceSettings, sessions: async_sessionmaker[AsyncSession]) -> FastAPI:
    return build(settings, sessions)


@contextlib.asynccontextmanager
async def client_of(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://shared.test") as c:
        yield c


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(app) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("/api/v1/data/as-integer", "-26423279263205196721815552"),  # the schemathesis finding's value
        ("/api/v1/data/as-integer", str(2**31)),
        ("/api/v1/data/cast", "twelve"),
        ("/api/v1/data/cast", "99999999999"),  # 22003 numeric_value_out_of_range
        ("/api/v1/data/too-long", "four"),
        ("/api/v1/data/driver/as-integer", str(2**31)),
        ("/api/v1/data/driver/cast", "twelve"),
    ],
)
async def test_a_data_error_caused_by_input_is_422(client: httpx.AsyncClient, path: str, value: str) -> None:
    response = await client.get(path, params={"value": value})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["status"] == 422 and problem["type"].endswith("/validation-error")
    assert "SELECT" not in response.text and "asyncpg" not in response.text, "no internals in the answer"


async def test_the_same_route_with_a_good_value_works(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/data/as-integer", params={"value": "7"})).json() == {"value": 7}


@pytest.mark.parametrize("path", ["/api/v1/data/shutting-down", "/api/v1/data/driver/shutting-down"])
async def test_a_database_shutting_down_is_503_not_500(client: httpx.AsyncClient, path: str) -> None:
    """Seen in the replica fault test (issue #13): during a PostgreSQL restart a few creates answered 500."""
    response = await client.get(path)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM_JSON and "Retry-After" in response.headers


@pytest.mark.parametrize("path", ["/api/v1/data/syntax", "/api/v1/data/driver/syntax"])
async def test_other_database_errors_stay_500(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 500 and response.json()["type"].endswith("/internal")


async def test_a_connection_lost_during_a_request_is_503_and_the_next_request_works(settings: ServiceSettings) -> None:
    engine = make_engine(settings.database_url, pool_size=1)  # one connection: the next request gets it again
    try:
        async with client_of(build(settings, session_factory(engine))) as client:
            response = await client.get("/api/v1/data/lost")
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == PROBLEM_JSON and "Retry-After" in response.headers
            assert (await client.get("/api/v1/data/backend")).status_code == 200
    finally:
        await engine.dispose()


async def test_a_pooled_connection_the_server_ended_is_not_handed_out(settings: ServiceSettings) -> None:
    """What a PostgreSQL restart leaves in the pool: connections the server closed while they waited. A request
    whose first statement goes to the driver's connection answered 500 on each of them."""
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        async with client_of(build(settings, session_factory(engine))) as client:
            first = (await client.get("/api/v1/data/backend")).json()["pid"]
            killer = await asyncpg.connect(asyncpg_dsn(settings.database_url))
            try:
                assert await killer.fetchval("SELECT pg_terminate_backend($1)", first)
                for _ in range(100):  # until the backend has exited
                    if not await killer.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", first):
                        break
                    await asyncio.sleep(0.05)
            finally:
                await killer.close()
            await asyncio.sleep(0.2)  # the pooled connection reads the end of its socket
            response = await client.get("/api/v1/data/backend")
            assert response.status_code == 200, response.text
            assert response.json()["pid"] != first
    finally:
        await engine.dispose()
