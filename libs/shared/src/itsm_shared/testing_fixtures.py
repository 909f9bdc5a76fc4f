"""Pytest fixtures every service's tests share, loaded as the `itsm` pytest plugin (the `pytest11` entry point of
itsm-shared): a service's tests/conftest.py defines `service_name` (and, when needed, `consumer_queues`,
`extra_env`, `trust_test_issuer`); a conftest fixture of the same name overrides the plugin's.

The app runs in-process against a database of its own, built by the real migrations, and the real RabbitMQ
under exchange and queue names of its own, as the session's broker user of its service (`broker_users`: one per
service, with a deployment's permissions); tests publish another service's events as that service's user
(`amqp_as`). Tokens come from a test issuer the app's verifier trusts."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI

from itsm_shared import trust
from itsm_shared.testing import (
    BrokerUsers,
    EventProbe,
    Listen,
    TestDatabase,
    TestIssuer,
    create_broker_users,
    create_database,
    drop_database,
    infrastructure,
    listening,
    migrate,
    remove_topology,
    session_topology,
    test_names,
)


@pytest.fixture(scope="session")
def consumer_queues() -> tuple[str, ...]:
    """The service's consumer queue names (unprefixed), removed with the session's topology."""
    return ()


@pytest.fixture(scope="session")
def extra_env() -> dict[str, str]:
    return {}


@pytest.fixture(scope="session")
def trust_test_issuer() -> bool:
    """Whether the app verifies tokens of the test issuer (the auth service uses its own keys instead)."""
    return True


@pytest.fixture(scope="session")
def infra() -> Iterator[tuple[str, str]]:
    with infrastructure() as urls:
        yield urls


@pytest.fixture(scope="session")
async def database(infra: tuple[str, str], service_name: str) -> AsyncIterator[TestDatabase]:
    db = await create_database(infra[0], f"itsm_test_{service_name}")
    result = migrate(service_name, db.admin_url)
    assert result.returncode == 0, result.stderr
    yield db
    await drop_database(db)


@pytest.fixture(scope="session")
async def names(infra: tuple[str, str], consumer_queues: tuple[str, ...]) -> AsyncIterator[dict[str, Any]]:
    names = test_names()
    yield names
    await remove_topology(
        infra[1],
        names["exchange"],
        names["dead_letter_exchange"],
        tuple(names["queue_prefix"] + q for q in consumer_queues),
    )


@pytest.fixture(scope="session")
async def broker_users(infra: tuple[str, str], names: dict[str, Any], service_name: str) -> AsyncIterator[BrokerUsers]:
    """A broker user per service (those of the trust table and this one), `<queue_prefix><service>`."""
    services = tuple(dict.fromkeys([*trust.ROLES, service_name]))
    users = await create_broker_users(infra[1], session_topology(names), services)
    yield users
    await asyncio.to_thread(users.delete)


@pytest.fixture(scope="session")
async def amqp_as(
    broker_users: BrokerUsers,
) -> AsyncIterator[Callable[[str], Awaitable[aio_pika.abc.AbstractRobustConnection]]]:
    """`await amqp_as("problem")`: a connection as that service's broker user (one per service, for the session;
    a service the session has no user for gets one, with the trust table's default role). What it publishes
    carries `user_id=connection.url.user`, as the service's own publishes do."""
    connections: dict[str, aio_pika.abc.AbstractRobustConnection] = {}

    async def connect(service: str) -> aio_pika.abc.AbstractRobustConnection:
        if service not in broker_users.passwords:
            await broker_users.add(service)
        if service not in connections:
            connections[service] = await aio_pika.connect_robust(broker_users.url(service))
        return connections[service]

    yield connect
    for connection in connections.values():
        await connection.close()


@pytest.fixture(scope="session")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="session")
def environment(
    database: TestDatabase,
    broker_users: BrokerUsers,
    names: dict[str, Any],
    service_name: str,
    extra_env: dict[str, str],
) -> dict[str, str]:
    env = {
        "ITSM_DATABASE_URL": database.app_url(service_name),
        "ITSM_AMQP_URL": broker_users.url(service_name),
        "ITSM_BROKER_USER_PREFIX": names["queue_prefix"],
        "ITSM_EXCHANGE": names["exchange"],
        "ITSM_DEAD_LETTER_EXCHANGE": names["dead_letter_exchange"],
        "ITSM_QUEUE_PREFIX": names["queue_prefix"],
        "ITSM_OUTBOX_SWEEP_SECONDS": "0.5",
        **extra_env,
    }
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
async def app(
    environment: dict[str, str], issuer: TestIssuer, service_name: str, trust_test_issuer: bool
) -> AsyncIterator[FastAPI]:
    config = importlib.import_module(f"{service_name}.config")
    config.get_settings.cache_clear()
    service_app: FastAPI = importlib.import_module(f"{service_name}.main").app
    async with service_app.router.lifespan_context(service_app):
        if trust_test_issuer:
            service_app.state.verifier = issuer.verifier()
        await asyncio.wait_for(service_app.state.runtime.broker_started.wait(), timeout=30)
        yield service_app


@pytest.fixture
async def client(app: FastAPI, service_name: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{service_name}.test") as c:
        yield c


@pytest.fixture(scope="session")
async def amqp(infra: tuple[str, str]) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(infra[1])
    yield connection
    await connection.close()


@pytest.fixture
def events_exchange(app: FastAPI, names: dict[str, Any]) -> str:
    """The session's events exchange, once declared (the app's startup declares it)."""
    return str(names["exchange"])


@pytest.fixture
async def listen(amqp: aio_pika.abc.AbstractRobustConnection, events_exchange: str) -> AsyncIterator[Listen]:
    """Opens `EventProbe`s on `events_exchange`, closed after the test: `probe = await listen("incident.#")`
    (arguments as `listening`'s after the exchange)."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_probe(*bindings: str, entity: str | None = None) -> EventProbe:
            return await stack.enter_async_context(listening(amqp, events_exchange, *bindings, entity=entity))

        yield open_probe


@dataclass
class Actor:
    """A user of given roles, with the headers to act as them."""

    id: uuid.UUID
    headers: dict[str, str]


@pytest.fixture
def actor(issuer: TestIssuer) -> Callable[..., Actor]:
    def make(*roles: str) -> Actor:
        subject = uuid.uuid4()
        return Actor(subject, {"Authorization": f"Bearer {issuer.token(*roles, subject=subject)}"})

    return make


@pytest.fixture
def agent(actor: Callable[..., Actor]) -> Actor:
    return actor("agent")


@pytest.fixture
def admin(actor: Callable[..., Actor]) -> Actor:
    return actor("admin")
