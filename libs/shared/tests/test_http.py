"""RFC 9457 errors, If-Match and Idempotency-Key, through an app built by `create_app` with a test router."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from itsm_shared.app import ServiceSpec, create_app
from itsm_shared.db import SessionDep
from itsm_shared.errors import PROBLEM_JSON, Conflict, NotFound
from itsm_shared.http import check_if_match, create_once, etag, with_etag
from itsm_shared.settings import ServiceSettings
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

SECRET = "s3cr3t-internal-detail"
CURRENT_VERSION = 3


class NewThing(BaseModel):
    name: str = Field(min_length=1)
    count: int


class NewUser(BaseModel):
    username: str


router = APIRouter(prefix="/api/v1/test")


@router.post("/things")
async def create_thing(thing: NewThing) -> dict[str, Any]:
    return thing.model_dump()


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError(f"database password is {SECRET}")


@router.get("/unreachable")
async def unreachable() -> None:
    raise ConnectionRefusedError(f"connect to 10.0.0.5:5432 refused ({SECRET})")


@router.get("/things/{thing_id}")
async def get_thing(thing_id: str) -> None:
    raise NotFound(f"no thing {thing_id}")


@router.patch("/versioned")
async def patch_versioned(request: Request) -> JSONResponse:
    check_if_match(request, CURRENT_VERSION)
    response = JSONResponse({"version": CURRENT_VERSION + 1})
    with_etag(response, CURRENT_VERSION + 1)
    return response


class CreatedUser(BaseModel):
    id: uuid.UUID
    username: str
    version: int = 1


async def insert_user(session: AsyncSession, username: str) -> CreatedUser:
    user_id = uuid.uuid4()
    await session.execute(
        text("INSERT INTO user_account (id, username, password_hash) VALUES (:id, :u, 'x')"),
        {"id": user_id, "u": username},
    )
    return CreatedUser(id=user_id, username=username)


@router.post("/users", status_code=201)
async def create_user(payload: NewUser, request: Request, session: SessionDep) -> JSONResponse:
    return await create_once(
        session,
        request.headers.get("X-Test-Principal", "tester"),
        request.headers.get("Idempotency-Key"),
        payload,
        lambda: insert_user(session, payload.username),
        location="/api/v1/test/users",
    )


class Refused(Conflict):
    """Refused after writing, like a failed login that is counted."""

    keeps_writes = True


@router.post("/refused-after-write")
async def refused_after_write(payload: NewUser, session: SessionDep, keep: bool = False) -> None:
    await insert_user(session, payload.username)
    raise Refused("counted, and refused") if keep else Conflict("refused: nothing stays")


@pytest.fixture(scope="module")
def app(settings: ServiceSettings, sessions: async_sessionmaker[AsyncSession]) -> FastAPI:
    spec = ServiceSpec(
        name="shared", title="Shared test", api_prefix="/api/v1/test", routers=[router], settings=settings
    )
    application = create_app(spec)
    application.state.sessions = sessions  # what the lifespan would set; routes here need nothing else
    return application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # The server error middleware answers 500 and then re-raises, as under uvicorn; look at the answer.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://shared.test") as c:
        yield c


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"]
    assert isinstance(body["detail"], str)
    return body


# ---------------------------------------------------------------- errors


async def test_validation_error_is_422_problem_with_locations(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/test/things", json={"name": "", "count": "many"})
    body = assert_problem(response, 422)
    locs = {tuple(e["loc"]) for e in body["errors"]}
    assert locs == {("body", "name"), ("body", "count")}
    assert all(isinstance(e["msg"], str) and e["msg"] for e in body["errors"])


async def test_malformed_json_body_is_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/test/things", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert body["errors"]


async def test_unhandled_exception_is_500_problem_without_internals(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/test/boom")
    body = assert_problem(response, 500)
    assert set(body) == {"type", "title", "status", "detail"}
    for leak in (SECRET, "Traceback", "RuntimeError", 'File "', ".py"):
        assert leak not in response.text


async def test_dependency_down_is_503_with_retry_after(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/test/unreachable")
    assert_problem(response, 503)
    assert response.headers["Retry-After"]
    assert SECRET not in response.text
    assert "10.0.0.5" not in response.text


async def test_not_found_is_404_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/api/v1/test/things/abc"), 404)
    assert body["detail"] == "no thing abc"
    # An unknown route is a problem too, not Starlette's plain {"detail": ...}.
    assert_problem(await client.get("/api/v1/test/no-such-route"), 404)


# ---------------------------------------------------------------- If-Match


@pytest.mark.parametrize(
    ("if_match", "status"),
    [
        (None, 200),
        ('"3"', 200),
        ("*", 200),
        ('"1", "3"', 200),
        ('"2"', 412),
        ("3", 412),
        ('"4"', 412),
    ],
)
async def test_if_match(client: httpx.AsyncClient, if_match: str | None, status: int) -> None:
    headers = {"If-Match": if_match} if if_match is not None else {}
    response = await client.patch("/api/v1/test/versioned", headers=headers)
    if status == 200:
        assert response.status_code == 200, response.text
        assert response.headers["ETag"] == etag(CURRENT_VERSION + 1) == '"4"'
    else:
        body = assert_problem(response, 412)
        assert "3" in body["detail"]


# ---------------------------------------------------------------- Idempotency-Key


async def users_named(sessions: async_sessionmaker[AsyncSession], username: str) -> int:
    async with sessions() as session:
        count = await session.scalar(text("SELECT count(*) FROM user_account WHERE username = :u"), {"u": username})
    return int(count or 0)


async def test_same_key_same_body_replays_and_creates_nothing(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    username = f"idem-{uuid.uuid4().hex[:8]}"
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = await client.post("/api/v1/test/users", json={"username": username}, headers=headers)
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = await client.post("/api/v1/test/users", json={"username": username}, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await users_named(sessions, username) == 1
    assert first.headers["ETag"] == '"1"'
    assert first.headers["Location"] == f"/api/v1/test/users/{first.json()['id']}"


async def test_same_key_different_body_is_422(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    key = str(uuid.uuid4())
    username, other = f"idem-{uuid.uuid4().hex[:8]}", f"idem-{uuid.uuid4().hex[:8]}"
    first = await client.post("/api/v1/test/users", json={"username": username}, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    reused = await client.post("/api/v1/test/users", json={"username": other}, headers={"Idempotency-Key": key})
    body = assert_problem(reused, 422)
    assert body["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await users_named(sessions, other) == 0
    # The key belongs to its principal: someone else may use the same key for their own request.
    theirs = await client.post(
        "/api/v1/test/users", json={"username": other}, headers={"Idempotency-Key": key, "X-Test-Principal": "else"}
    )
    assert theirs.status_code == 201, theirs.text
    assert "Idempotent-Replayed" not in theirs.headers
    assert await users_named(sessions, other) == 1


async def test_concurrent_requests_with_one_key_create_once(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    username = f"idem-{uuid.uuid4().hex[:8]}"
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    responses = await asyncio.gather(
        *(client.post("/api/v1/test/users", json={"username": username}, headers=headers) for _ in range(5))
    )
    assert [r.status_code for r in responses] == [201] * 5, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 4
    assert await users_named(sessions, username) == 1


async def test_without_key_every_request_creates(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    a, b = f"idem-{uuid.uuid4().hex[:8]}", f"idem-{uuid.uuid4().hex[:8]}"
    assert (await client.post("/api/v1/test/users", json={"username": a})).status_code == 201
    assert (await client.post("/api/v1/test/users", json={"username": b})).status_code == 201
    assert await users_named(sessions, a) == await users_named(sessions, b) == 1


async def test_key_too_long_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/test/users", json={"username": "never-created"}, headers={"Idempotency-Key": "k" * 201}
    )
    assert_problem(response, 422)


# ---------------------------------------------------------------- the transaction seam


async def test_the_request_seam_commits_on_success_and_rolls_back_on_error(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    created, refused = f"seam-{uuid.uuid4().hex[:8]}", f"seam-{uuid.uuid4().hex[:8]}"
    assert (await client.post("/api/v1/test/users", json={"username": created})).status_code == 201
    assert await users_named(sessions, created) == 1  # committed before the response was sent
    assert_problem(await client.post("/api/v1/test/refused-after-write", json={"username": refused}), 409)
    assert await users_named(sessions, refused) == 0


async def test_an_error_that_keeps_its_writes_commits_them(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    username = f"seam-{uuid.uuid4().hex[:8]}"
    response = await client.post("/api/v1/test/refused-after-write?keep=true", json={"username": username})
    assert_problem(response, 409)
    assert await users_named(sessions, username) == 1
