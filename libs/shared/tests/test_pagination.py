"""Keyset pagination over real rows (auth's user_account), with ties on the sort value."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Query
from itsm_shared.db import SessionDep
from itsm_shared.errors import Invalid, install_error_handlers
from itsm_shared.pagination import Page, Sort, check_limit, decode_cursor, encode_cursor, keyset, page_of, parse_sort
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

ROWS = 120
users = sa.table(
    "user_account",
    sa.column("id", sa.Uuid()),
    sa.column("username", sa.String()),
    sa.column("version", sa.Integer()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
SORTS = {"version": users.c.version, "created_at": users.c.created_at, "username": users.c.username}


@pytest.fixture(scope="module")
async def prefix(sessions: async_sessionmaker[AsyncSession]) -> str:
    """120 users in three transactions: created_at ties 40 ways, version ties 7 ways (i % 7; any integer column of the table does)."""
    tag = f"pg{uuid.uuid4().hex[:8]}-"
    for chunk in range(3):
        async with sessions() as session, session.begin():
            for i in range(chunk * 40, chunk * 40 + 40):
                await session.execute(
                    sa.text(
                        "INSERT INTO user_account (id, username, password_hash, version) VALUES (:id, :u, 'x', :f)"
                    ),
                    {"id": uuid.uuid4(), "u": f"{tag}{i:03d}", "f": i % 7},
                )
    return tag


def base_query(prefix: str) -> sa.Select[Any]:
    return sa.select(users.c.id, users.c.username, users.c.version, users.c.created_at).where(
        users.c.username.like(f"{prefix}%")
    )


async def walk(
    sessions: async_sessionmaker[AsyncSession], prefix: str, sort: Sort, limit: int
) -> tuple[list[Any], int]:
    seen: list[Any] = []
    cursor: str | None = None
    pages = 0
    while True:
        async with sessions() as session:
            rows = (await session.execute(keyset(base_query(prefix), sort, users.c.id, limit, cursor))).all()
        items, cursor = page_of(rows, sort, limit, value_of=lambda r: getattr(r, sort.name), id_of=lambda r: r.id)
        seen.extend(items)
        pages += 1
        assert pages <= ROWS + 1, "pagination does not terminate"
        if cursor is None:
            return seen, pages


@pytest.mark.parametrize("order", ["version", "-version", "created_at", "-created_at", "+username"])
@pytest.mark.parametrize("limit", [1, 13, 40, 200])
async def test_keyset_walks_every_row_once_in_order(
    sessions: async_sessionmaker[AsyncSession], prefix: str, order: str, limit: int
) -> None:
    sort = parse_sort(order, SORTS)
    async with sessions() as session:
        everything = (await session.execute(base_query(prefix))).all()
    assert len(everything) == ROWS
    assert len({r.created_at for r in everything}) == 3  # the ties are real
    expected = sorted(everything, key=lambda r: (getattr(r, sort.name), r.id), reverse=sort.descending)

    seen, pages = await walk(sessions, prefix, sort, limit)

    assert [r.id for r in seen] == [r.id for r in expected]
    assert len({r.id for r in seen}) == ROWS
    assert pages == -(-ROWS // limit)  # no empty trailing page


def test_cursor_round_trips_every_value_kind() -> None:
    from datetime import UTC, datetime

    row_id = uuid.uuid4()
    for name, value in (("n", 5), ("s", "abc"), ("t", datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))):
        sort = Sort(column=None, descending=True, name=name)
        assert decode_cursor(encode_cursor(sort, value, row_id), sort) == (value, row_id)


def test_cursor_value_is_checked_against_the_sort_column() -> None:
    import enum

    class Status(enum.Enum):
        OPEN = "open"
        CLOSED = "closed"

    row_id = uuid.uuid4()
    status = Sort(column=sa.column("status", sa.Enum(Status)), descending=False, name="status")
    assert decode_cursor(encode_cursor(status, "closed", row_id), status) == (Status.CLOSED, row_id)
    with pytest.raises(Invalid):
        decode_cursor(encode_cursor(status, "bogus", row_id), status)
    score = Sort(column=sa.column("score", sa.Float()), descending=False, name="score")
    assert decode_cursor(encode_cursor(score, 2, row_id), score) == (2, row_id)
    big = Sort(column=sa.column("big", sa.BigInteger()), descending=False, name="big")
    assert decode_cursor(encode_cursor(big, 2**40, row_id), big) == (2**40, row_id)
    with pytest.raises(Invalid):
        decode_cursor(encode_cursor(big, 2**70, row_id), big)


def test_limit_bounds() -> None:
    assert check_limit(1) == 1
    assert check_limit(200) == 200
    for bad in (0, -1, 201):
        with pytest.raises(Invalid):
            check_limit(bad)


# ---------------------------------------------------------------- tampered cursors through HTTP


def raw_cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.fixture(scope="module")
def app(sessions: async_sessionmaker[AsyncSession], prefix: str) -> FastAPI:
    application = FastAPI()
    install_error_handlers(application)
    application.state.sessions = sessions

    @application.get("/users")
    async def list_users(
        session: SessionDep, sort: str = "version", limit: int = 50, cursor: str | None = Query(None)
    ) -> Page[dict[str, Any]]:
        order = parse_sort(sort, SORTS)
        rows = (await session.execute(keyset(base_query(prefix), order, users.c.id, limit, cursor))).all()
        items, next_cursor = page_of(
            rows, order, limit, value_of=lambda r: getattr(r, order.name), id_of=lambda r: r.id
        )
        return Page(items=[{"id": str(r.id), "username": r.username} for r in items], next_cursor=next_cursor)

    return application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://shared.test") as c:
        yield c


async def test_http_walk_uses_next_cursor(client: httpx.AsyncClient) -> None:
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(ROWS):
        params: dict[str, Any] = {"sort": "-created_at", "limit": 50}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/users", params=params)
        assert response.status_code == 200, response.text
        ids += [item["id"] for item in response.json()["items"]]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    assert len(ids) == len(set(ids)) == ROWS


TAMPERED = {
    "not base64 at all": "%%%***",
    "base64 of garbage": base64.urlsafe_b64encode(b"\xff\xfe garbage").decode(),
    "json but not an object": raw_cursor([1, 2, 3]),
    "missing fields": raw_cursor({"s": "version"}),
    "another sort": raw_cursor({"s": "username", "d": False, "v": "x", "id": str(uuid.uuid4())}),
    "another direction": raw_cursor({"s": "version", "d": True, "v": 1, "id": str(uuid.uuid4())}),
    "id not a uuid": raw_cursor({"s": "version", "d": False, "v": 1, "id": "1 OR 1=1"}),
    "value of the wrong type": raw_cursor({"s": "version", "d": False, "v": "1; DROP", "id": str(uuid.uuid4())}),
    "value an object": raw_cursor({"s": "version", "d": False, "v": {"x": 1}, "id": str(uuid.uuid4())}),
    "value out of range": raw_cursor({"s": "version", "d": False, "v": 2**40, "id": str(uuid.uuid4())}),
    "value a boolean": raw_cursor({"s": "version", "d": False, "v": True, "id": str(uuid.uuid4())}),
    "value null": raw_cursor({"s": "version", "d": False, "v": None, "id": str(uuid.uuid4())}),
    "bad timestamp": raw_cursor({"s": "created_at", "d": False, "v": {"t": "yesterday"}, "id": str(uuid.uuid4())}),
    "timestamp as number": raw_cursor({"s": "created_at", "d": False, "v": 12, "id": str(uuid.uuid4())}),
    "text as number": raw_cursor({"s": "username", "d": False, "v": 12, "id": str(uuid.uuid4())}),
}
SORT_OF = {"bad timestamp": "created_at", "timestamp as number": "created_at", "text as number": "username"}


@pytest.mark.parametrize("case", sorted(TAMPERED))
async def test_tampered_cursor_is_422(client: httpx.AsyncClient, case: str) -> None:
    response = await client.get("/users", params={"cursor": TAMPERED[case], "sort": SORT_OF.get(case, "version")})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["query", "cursor"]


async def test_unknown_sort_and_limit_are_422(client: httpx.AsyncClient) -> None:
    assert (await client.get("/users", params={"sort": "password_hash"})).status_code == 422
    assert (await client.get("/users", params={"limit": 0})).status_code == 422
    assert (await client.get("/users", params={"limit": 201})).status_code == 422
