"""Fixtures for the shared mechanisms, against the real PostgreSQL and the real RabbitMQ.

The session gets a database of its own, built by the auth service's real migrations (they carry exactly the
shared tables, outbox / inbox / idempotency_key, plus auth's own), and is used through the `auth_app` login role
as a running service would. Exchanges and queues carry this session's own names and are deleted at the end.
Test events come from the service `shared` (support.SERVICE), which may publish any routing key: the tests
publish them as its broker user (`publisher`), created for the session like the services' (`broker_users`).
Nothing waits by sleeping: `eventually` (itsm_shared.testing) polls a condition until a deadline, and `listen`
(the `itsm` pytest plugin) opens `EventProbe`s on the session's exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from faststream.rabbit import RabbitBroker
from itsm_shared import trust
from itsm_shared.auth import JWKSCache, TokenVerifier
from itsm_shared.broker import declare_dead_letter_queue, declare_topology, make_broker, unrouted_name
from itsm_shared.db import make_engine, session_factory
from itsm_shared.events import CloudEvent
from itsm_shared.inbox import subscribe
from itsm_shared.relay import OutboxRelay
from itsm_shared.settings import ServiceSettings
from itsm_shared.testing import (
    BrokerUsers,
    TestDatabase,
    create_broker_users,
    create_database,
    drop_database,
    infrastructure,
    migrate,
    session_topology,
    test_names,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .jwks_support import AUDIENCE, ISSUER, JWKS_URL, JWKSServer, SigningKey
from .support import SERVICE, SERVICE_ROLE

# SQLModel nags on every AsyncSession.execute(); here it runs Core statements and text(), which is what it is for.
SQLMODEL_EXECUTE_NOTICE = r"ignore:\s*\W*\s*You probably want to use `session.exec\(\)`:DeprecationWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.filterwarnings(SQLMODEL_EXECUTE_NOTICE))


# ---------------------------------------------------------------- infrastructure


@pytest.fixture(scope="session")
def infra() -> Iterator[tuple[str, str]]:
    with infrastructure() as urls:
        yield urls


@pytest.fixture(scope="session")
async def database(infra: tuple[str, str]) -> AsyncIterator[TestDatabase]:
    db = await create_database(infra[0], "itsm_test_shared")
    try:
        result = migrate("auth", db.admin_url)
        assert result.returncode == 0, result.stderr
        yield db
    finally:
        await drop_database(db)


@pytest.fixture(scope="session")
def names() -> dict[str, Any]:
    return test_names()


@pytest.fixture(scope="session", autouse=True)
def shared_role() -> Iterator[None]:
    """The test service `shared` publishes any routing key (batch_worker.py says the same in its process)."""
    with mock.patch.dict(trust.ROLES, {SERVICE: SERVICE_ROLE}):
        yield


@pytest.fixture(scope="session")
async def broker_users(infra: tuple[str, str], names: dict[str, Any]) -> AsyncIterator[BrokerUsers]:
    """This session's broker users: `shared`, and the services' (for the attacks on the trust checks)."""
    users = await create_broker_users(
        infra[1], session_topology(names), [*trust.ROLES, SERVICE], {SERVICE: SERVICE_ROLE}
    )
    yield users
    await asyncio.to_thread(users.delete)


@pytest.fixture(scope="session")
def settings(database: TestDatabase, infra: tuple[str, str], names: dict[str, Any]) -> ServiceSettings:
    return ServiceSettings(
        database_url=database.app_url("auth"),
        amqp_url=infra[1],
        broker_user_prefix=names["queue_prefix"],
        exchange=names["exchange"],
        dead_letter_exchange=names["dead_letter_exchange"],
        outbox_sweep_seconds=0.2,
        consumer_delivery_limit=3,
    )


@pytest.fixture(scope="session")
async def engine(settings: ServiceSettings) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(settings.database_url, pool_size=5)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="session")
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


@pytest.fixture(scope="session")
async def amqp(infra: tuple[str, str]) -> AsyncIterator[AbstractRobustConnection]:
    conn = await aio_pika.connect_robust(infra[1])
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
async def publisher(broker_users: BrokerUsers, broker: RabbitBroker) -> AsyncIterator[AbstractChannel]:
    """A confirming channel as the `shared` service's broker user (test_inbox.publish sets its user_id)."""
    connection = await aio_pika.connect_robust(broker_users.url(SERVICE))
    yield await connection.channel(publisher_confirms=True)
    await connection.close()


@pytest.fixture(scope="session")
async def channel(amqp: AbstractRobustConnection) -> AsyncIterator[AbstractChannel]:
    ch = await amqp.channel()
    yield ch
    with contextlib.suppress(Exception):
        await ch.close()


@pytest.fixture(scope="session")
async def broker(settings: ServiceSettings, amqp: AbstractRobustConnection) -> AsyncIterator[RabbitBroker]:
    """A connected publishing broker with the session's topology declared; the topology goes at the end."""
    b = make_broker(settings)
    await b.connect()
    await declare_topology(b, settings)
    yield b
    await b.stop()
    cleanup = await amqp.channel()
    await cleanup.queue_delete(unrouted_name(settings))
    for exchange in (settings.exchange, unrouted_name(settings), settings.dead_letter_exchange):
        await cleanup.exchange_delete(exchange)
    await cleanup.close()


# ---------------------------------------------------------------- probes: what reached the exchange


@pytest.fixture
def events_exchange(settings: ServiceSettings, broker: RabbitBroker) -> str:
    """The session's exchange, declared by `broker`: the plugin's `listen` opens its probes there."""
    return settings.exchange


# ---------------------------------------------------------------- outbox


@pytest.fixture
async def clean_outbox(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Relay tests own the whole outbox table while they run."""
    async with sessions() as session, session.begin():
        await session.execute(text("DELETE FROM outbox"))


@pytest.fixture
async def relays(settings: ServiceSettings) -> AsyncIterator[Callable[..., OutboxRelay]]:
    started: list[OutboxRelay] = []

    def start(*, relay_settings: ServiceSettings | None = None) -> OutboxRelay:
        own = relay_settings or settings
        relay = OutboxRelay(service=SERVICE, settings=own, user_id=trust.connection_user(own.amqp_url))
        relay.start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        await relay.stop()


# ---------------------------------------------------------------- consumers


@pytest.fixture
async def consumers(
    settings: ServiceSettings, broker: RabbitBroker, amqp: AbstractRobustConnection
) -> AsyncIterator[Callable[[list[tuple[Any, ...]]], Awaitable[RabbitBroker]]]:
    """Start a consuming broker the way app.py does (subscribe, connect, topology, DLQs, start). Each subscription
    is (queue, routing key, handler), or with the one publisher the queue takes as a fourth."""
    brokers: list[RabbitBroker] = []
    queues: list[str] = []

    async def start(subscriptions: list[tuple[Any, ...]]) -> RabbitBroker:
        b = make_broker(settings)
        brokers.append(b)
        for queue, routing_key, handler, *publisher in subscriptions:
            queues.append(queue)
            subscribe(
                b,
                settings,
                queue=queue,
                routing_key=routing_key,
                event_model=CloudEvent[dict[str, Any]],
                handler=handler,
                publisher=publisher[0] if publisher else None,
            )
        await b.connect()
        await declare_topology(b, settings)
        for queue in queues[-len(subscriptions) :]:
            await declare_dead_letter_queue(b, settings, queue)
        await b.start()
        return b

    yield start
    for b in brokers:
        await b.stop()
    cleanup = await amqp.channel()
    for queue in queues:
        await cleanup.queue_delete(queue)
        await cleanup.queue_delete(f"{queue}.dlq")
    await cleanup.close()


# ---------------------------------------------------------------- tokens and a JWKS (jwks_support.py)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey("k1")


@pytest.fixture
def server(key: SigningKey) -> JWKSServer:
    return JWKSServer(key)


@pytest.fixture
async def cache(server: JWKSServer) -> AsyncIterator[JWKSCache]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    async with JWKSCache(JWKS_URL, client=client, min_refetch_seconds=0.3) as c:
        yield c


@pytest.fixture
def verifier(cache: JWKSCache) -> TokenVerifier:
    return TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
