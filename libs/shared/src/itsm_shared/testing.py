"""Test support: find PostgreSQL and RabbitMQ, give each test session its own database and exchange names; wait
for a condition with a deadline (`eventually`) and watch what reaches an exchange (`EventProbe`, `listening`).
The pytest fixtures built on these are in `testing_fixtures`, loaded as the `itsm` pytest plugin.

Order (ARCHITECTURE.md, Tests): ITSM_TEST_DATABASE_URL / ITSM_TEST_AMQP_URL; a Docker engine through
testcontainers; the local services at their default ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import asyncpg
from sqlalchemy.engine import make_url

from itsm_shared.broker_users import (
    RABBITMQCTL,
    Topology,
    create_users,
    definitions,
    delete_users,
    new_password,
    url_as,
)
from itsm_shared.db import asyncpg_dsn
from itsm_shared.provision import app_url
from itsm_shared.trust import Role

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue

T = TypeVar("T")

LOCAL_DATABASE = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def _docker_engine() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def infrastructure() -> Iterator[tuple[str, str]]:
    """(admin database URL, AMQP URL) for this test session."""
    db = os.environ.get("ITSM_TEST_DATABASE_URL")
    amqp = os.environ.get("ITSM_TEST_AMQP_URL")
    if db and amqp:
        yield db, amqp
        return
    if _docker_engine():
        from testcontainers.postgres import PostgresContainer
        from testcontainers.rabbitmq import RabbitMqContainer

        with PostgresContainer("postgres:15") as pg, RabbitMqContainer("rabbitmq:4") as mq:
            host, port = mq.get_container_host_ip(), mq.get_exposed_port(5672)
            # The sessions' broker users are made by rabbitmqctl, inside the container.
            os.environ.setdefault(RABBITMQCTL, f"docker exec {mq.get_wrapped_container().id} rabbitmqctl")
            yield (db or pg.get_connection_url(driver=None)), (amqp or f"amqp://guest:guest@{host}:{port}/")
        return
    yield db or LOCAL_DATABASE, amqp or LOCAL_AMQP


@dataclass
class TestDatabase:
    admin_url: str
    name: str

    def app_url(self, service: str) -> str:
        return app_url(self.admin_url, service)


async def create_database(server_url: str, prefix: str = "itsm_test") -> TestDatabase:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return TestDatabase(make_url(server_url).set(database=name).render_as_string(hide_password=False), name)


async def drop_database(db: TestDatabase) -> None:
    url = make_url(db.admin_url).set(database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
    finally:
        await conn.close()


def migrate(service: str, admin_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Build a service's schema the way deployments do: its real migrations, in a separate process."""
    env = {**os.environ, "ITSM_DATABASE_URL": admin_url}
    return subprocess.run(
        [sys.executable, "-m", "itsm_shared.migrate", service, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_names() -> dict[str, Any]:
    """Exchange names of one test session, so runs never collide with a running stack or each other."""
    run = uuid.uuid4().hex[:8]
    return {
        "exchange": f"itsm.test.{run}.events",
        "dead_letter_exchange": f"itsm.test.{run}.dlx",
        "queue_prefix": f"itsm.test.{run}.",
        "run": run,
    }


def session_topology(names: dict[str, Any]) -> Topology:
    """The broker names of a test session (`test_names`); its users are `<queue_prefix><service>`."""
    return Topology(
        exchange=names["exchange"],
        dead_letter_exchange=names["dead_letter_exchange"],
        queue_prefix=names["queue_prefix"],
        user_prefix=names["queue_prefix"],
    )


@dataclass
class BrokerUsers:
    """The broker users of one test session, one per service, with the permissions a deployment gives them
    (`itsm_shared.broker_users`), created by rabbitmqctl (`ITSM_RABBITMQCTL`) and deleted at the end."""

    admin_url: str
    topology: Topology
    passwords: dict[str, str]

    def user(self, service: str) -> str:
        return self.topology.user(service)

    def url(self, service: str) -> str:
        """The AMQP URL of `service`'s user."""
        return url_as(self.admin_url, self.user(service), self.passwords[service])

    def delete(self) -> None:
        delete_users([self.user(service) for service in self.passwords])

    async def add(self, service: str, of: Role | None = None) -> None:
        """One more service's user (`of`: its role, default the trust table's), for a test's own entity."""
        more = await create_broker_users(self.admin_url, self.topology, [service], {service: of} if of else None)
        self.passwords.update(more.passwords)


async def create_broker_users(
    admin_url: str, topology: Topology, services: Sequence[str], roles: Mapping[str, Role] | None = None
) -> BrokerUsers:
    """Create a user for each of `services` (with `roles` over the trust table's) and wait until they log in."""
    import aio_pika

    users = BrokerUsers(admin_url, topology, {service: new_password() for service in services})
    await asyncio.to_thread(create_users, definitions(users.passwords, topology, roles))

    async def logs_in() -> bool:
        try:
            connection = await aio_pika.connect(users.url(services[-1]), timeout=5)
        except Exception:
            return False
        await connection.close()
        return True

    await eventually(logs_in, timeout=15, what=f"the broker user {users.user(services[-1])} to log in")
    return users


def parse_cloudevent(body: bytes) -> dict[str, Any]:
    """Parse with the official CloudEvents SDK (structured JSON format): attributes plus `data`.
    The SDK validates required attributes and extension names, so a malformed envelope raises here."""
    from cloudevents.core.formats.json import JSONFormat

    event = JSONFormat().read(None, body)
    return {**event.get_attributes(), "data": event.get_data()}


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], object] = bool,
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str | None = None,
) -> T:
    """Await `probe()` every `interval` seconds until `check` holds on its value (by default: the value is truthy)
    and return that value; after `timeout` seconds fail with the last value. Tests wait this way, never by
    sleeping a fixed time for something to happen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if check(value):
            return value
        if loop.time() >= deadline:
            name = what or getattr(probe, "__qualname__", repr(probe))
            raise AssertionError(f"{name} not reached within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)


async def remove_topology(
    amqp_url: str, exchange: str, dead_letter_exchange: str, queues: tuple[str, ...] = ()
) -> None:
    """Delete what a test session declared on the shared broker (exchanges, the unrouted queue, `queues`
    and their dead-letter queues), so runs leave nothing behind."""
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for queue in (f"{exchange}.unrouted", *queues, *(f"{q}.dlq" for q in queues)):
            await channel.queue_delete(queue)
        for name in (exchange, f"{exchange}.unrouted", dead_letter_exchange):
            await channel.exchange_delete(name)
    finally:
        await connection.close()


class TestIssuer:
    """Mints access tokens like the auth service does (EdDSA, typ at+jwt) with a key of its own, and serves
    as the verifier's key source: service tests act as any role without running the auth service."""

    __test__ = False  # not a pytest test class

    def __init__(self, issuer: str = "itsm-auth", audience: str = "itsm") -> None:
        import jwt
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.issuer, self.audience = issuer, audience
        private = Ed25519PrivateKey.generate()
        self.private_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        public = jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
        self.kid = "test-" + uuid.uuid4().hex[:8]
        self.jwk = jwt.PyJWK({**public, "kid": self.kid, "alg": "EdDSA"})

    async def key(self, kid: str) -> Any:
        from itsm_shared.errors import Unauthorized

        if kid != self.kid:
            raise Unauthorized("unknown signing key")
        return self.jwk

    def token(self, *roles: str, subject: uuid.UUID | None = None, ttl: int = 900, **claims: Any) -> str:
        import time

        import jwt

        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(subject or uuid.uuid4()),
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "roles": list(roles),
            "kind": "user",
            **claims,
        }
        return jwt.encode(body, self.private_pem, algorithm="EdDSA", headers={"kid": self.kid, "typ": "at+jwt"})

    def verifier(self) -> Any:
        from itsm_shared.auth import TokenVerifier

        return TokenVerifier(self, issuer=self.issuer, audience=self.audience)


@dataclass(frozen=True)
class Arrival:
    """One message an `EventProbe` received: the raw AMQP message (its properties: `message_id`, `content_type`,
    `delivery_mode`, `routing_key`, `headers`), the CloudEvent parsed from it (None when the body is not one) and
    when it arrived."""

    message: AbstractIncomingMessage
    event: dict[str, Any] | None
    received: datetime


class EventProbe:
    """An exclusive queue on a test exchange, consumed from the moment it is bound: every message is kept, with
    its parsed CloudEvent and its arrival time. The exchange is shared by every test of a session and the relay
    may publish a test's events late, so a test selects its own events (by `subject`, by type, or with `where`)
    and waits for them with a deadline.

    Types are written in full (`itsm.incident.updated`), as routing keys (`incident.updated`), or short
    (`updated`, which means `itsm.<entity>.updated`)."""

    def __init__(self, queue: AbstractQueue, entity: str | None = None) -> None:
        self.queue, self.entity = queue, entity
        self.arrivals: list[Arrival] = []

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event: dict[str, Any] | None = parse_cloudevent(message.body)
        except Exception:
            event = None
        self.arrivals.append(Arrival(message, event, datetime.now(UTC)))

    @property
    def messages(self) -> list[AbstractIncomingMessage]:
        """Every message received, in arrival order."""
        return [a.message for a in self.arrivals]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every CloudEvent received, in arrival order."""
        return [a.event for a in self.arrivals if a.event is not None]

    def type_of(self, type: str) -> str:
        if type.startswith("itsm."):
            return type
        if "." in type:
            return f"itsm.{type}"
        if self.entity is None:
            raise ValueError(f"a short type ({type!r}) needs the probe's entity")
        return f"itsm.{self.entity}.{type}"

    def of(
        self, subject: Any = None, *types: str, where: Callable[[dict[str, Any]], object] | None = None
    ) -> list[dict[str, Any]]:
        """The events so far about `subject` (any when None), of `types` (any when none), for which `where` holds."""
        wanted = {self.type_of(t) for t in types}
        return [
            e
            for e in self.events
            if (subject is None or e.get("subject") == str(subject))
            and (not wanted or e["type"] in wanted)
            and (where is None or where(e))
        ]

    def arrival_of(self, event: dict[str, Any]) -> Arrival:
        return next(a for a in self.arrivals if a.event is not None and a.event["id"] == event["id"])

    def message_of(self, event: dict[str, Any]) -> AbstractIncomingMessage:
        return self.arrival_of(event).message

    def seen(self, subject: Any = None) -> list[tuple[Any, ...]]:
        """(type, subject, sequence) of the events so far (about `subject`), for failure messages."""
        return [(e["type"], e.get("subject"), e.get("sequence")) for e in self.of(subject)]

    async def until(self, check: Callable[[EventProbe], T], *, timeout: float = 10.0, what: str | None = None) -> T:
        """Wait until `check(self)` is truthy and return it; fail after `timeout` seconds with what was seen."""

        async def look() -> T:
            return check(self)

        try:
            return await eventually(look, timeout=timeout, what=what)
        except AssertionError as failed:
            raise AssertionError(f"{failed}; received {self.seen()[-30:]}") from None

    async def wait(
        self,
        subject: Any = None,
        *types: str,
        count: int = 1,
        where: Callable[[dict[str, Any]], object] | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` events match (see `of`); return every matching one."""

        def enough(probe: EventProbe) -> list[dict[str, Any]]:
            found = probe.of(subject, *types, where=where)
            return found if len(found) >= count else []

        kinds = " ".join(self.type_of(t) for t in types) or "event"
        about = "" if subject is None else f" about {subject}"
        return await self.until(enough, timeout=timeout, what=f"{count} x {kinds}{about}")

    async def expect(self, subject: Any, *types: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until the events about `subject` include `types` (with multiplicity); return all of them."""
        want = Counter(self.type_of(t) for t in types)

        def complete(probe: EventProbe) -> list[dict[str, Any]]:
            got = probe.of(subject)
            have = Counter(e["type"] for e in got)
            return got if all(have[t] >= n for t, n in want.items()) else []

        return await self.until(complete, timeout=timeout, what=f"{dict(want)} about {subject}")

    async def one(
        self, subject: Any, type: str, *, sequence: int | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Wait for the event of `type` about `subject` (with `sequence`, when given) and return it."""
        found = await self.wait(
            subject, type, where=lambda e: sequence is None or e.get("sequence") == sequence, timeout=timeout
        )
        return found[0]


@contextlib.asynccontextmanager
async def listening(
    amqp: AbstractConnection, exchange: str, *bindings: str, entity: str | None = None
) -> AsyncIterator[EventProbe]:
    """An `EventProbe` on `exchange` for each routing-key pattern in `bindings` (default `#`); bind before acting.
    Short types mean `entity`'s, by default the first word of the first binding (`incident.#`: incident).
    A topic wildcard stands for whole words: `incident.sla_*` matches nothing, bind each key instead."""
    bindings = bindings or ("#",)
    if entity is None and bindings[0].split(".")[0] not in ("#", "*"):
        entity = bindings[0].split(".")[0]
    channel = await amqp.channel()
    try:
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        target = await channel.get_exchange(exchange)
        for key in bindings:
            await queue.bind(target, key)
        probe = EventProbe(queue, entity)
        await queue.consume(probe.on_message, no_ack=True)
        yield probe
    finally:
        await channel.close()


class Listen(Protocol):
    """The `listen` fixture: `probe = await listen("incident.#")` opens an `EventProbe` on the session's exchange
    (arguments as `listening`'s after the exchange), closed after the test."""

    async def __call__(self, *bindings: str, entity: str | None = None) -> EventProbe: ...
