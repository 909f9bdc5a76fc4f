"""Auth tests run the real app in-process against a database of their own, built by the real migrations,
and the real RabbitMQ under exchange names of their own."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI
from itsm_shared.testing import (
    TestDatabase,
    create_database,
    drop_database,
    infrastructure,
    migrate,
    remove_topology,
    test_names,
)

ADMIN_PASSWORD = "bootstrap-admin-password"


@pytest.fixture(scope="session")
def infra() -> Iterator[tuple[str, str]]:
    with infrastructure() as urls:
        yield urls


@pytest.fixture(scope="session")
async def database(infra: tuple[str, str]) -> AsyncIterator[TestDatabase]:
    db = await create_database(infra[0], "itsm_test_auth")
    result = migrate("auth", db.admin_url)
    assert result.returncode == 0, result.stderr
    yield db
    await drop_database(db)


@pytest.fixture(scope="session")
async def names(infra: tuple[str, str]) -> AsyncIterator[dict[str, Any]]:
    names = test_names()
    yield names
    await remove_topology(infra[1], names["exchange"], names["dead_letter_exchange"])


@pytest.fixture(scope="session")
async def app(database: TestDatabase, infra: tuple[str, str], names: dict[str, Any]) -> AsyncIterator[FastAPI]:
    os.environ.update(
        {
            "ITSM_DATABASE_URL": database.app_url("auth"),
            "ITSM_AMQP_URL": infra[1],
            "ITSM_EXCHANGE": names["exchange"],
            "ITSM_DEAD_LETTER_EXCHANGE": names["dead_letter_exchange"],
            "ITSM_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "ITSM_OUTBOX_SWEEP_SECONDS": "0.5",
            "ITSM_LOCKOUT_SECONDS": "900",
        }
    )
    from auth.config import get_settings

    get_settings.cache_clear()
    from auth.main import app as auth_app

    async with auth_app.router.lifespan_context(auth_app):
        await asyncio.wait_for(auth_app.state.runtime.broker_started.wait(), timeout=30)
        yield auth_app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as c:
        yield c


@pytest.fixture(scope="session")
async def amqp(infra: tuple[str, str]) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    conn = await aio_pika.connect_robust(infra[1])
    yield conn
    await conn.close()


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/token", data={"grant_type": "password", "username": username, "password": password}
    )


async def admin_token(client: httpx.AsyncClient) -> str:
    response = await login(client, "admin", ADMIN_PASSWORD)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
