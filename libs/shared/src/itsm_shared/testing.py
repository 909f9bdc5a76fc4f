"""Test support: find PostgreSQL and RabbitMQ, give each test session its own database and exchange names.

Order (ARCHITECTURE.md, Tests): ITSM_TEST_DATABASE_URL / ITSM_TEST_AMQP_URL; a Docker engine through
testcontainers; the local services at their default ports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from itsm_shared.db import asyncpg_dsn
from itsm_shared.provision import app_url

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


def parse_cloudevent(body: bytes) -> dict[str, Any]:
    """Parse with the official CloudEvents SDK (structured JSON format): attributes plus `data`.
    The SDK validates required attributes and extension names, so a malformed envelope raises here."""
    from cloudevents.core.formats.json import JSONFormat

    event = JSONFormat().read(None, body)
    return {**event.get_attributes(), "data": event.get_data()}


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


class EventProbe:
    """An exclusive queue on a test exchange collecting CloudEvents as they arrive. The exchange is shared by
    every test of a session and the relay may publish a test's events late, so a test selects its own events
    by `subject` and waits for them with a deadline."""

    def __init__(self, queue: Any, entity: str) -> None:
        self.queue, self.entity = queue, entity
        self.events: list[dict[str, Any]] = []
        self.messages: list[Any] = []

    async def drain(self) -> None:
        while (message := await self.queue.get(fail=False, no_ack=True)) is not None:
            self.messages.append(message)
            self.events.append(parse_cloudevent(message.body))

    def _type(self, short: str) -> str:
        return short if short.startswith("itsm.") else f"itsm.{self.entity}.{short}"

    def of(self, subject: Any, *types: str) -> list[dict[str, Any]]:
        """Events about `subject` so far (optionally only of the given short types, e.g. "updated")."""
        wanted = {self._type(t) for t in types}
        return [e for e in self.events if e.get("subject") == str(subject) and (not types or e["type"] in wanted)]

    def message_of(self, event: dict[str, Any]) -> Any:
        return next(m for m, e in zip(self.messages, self.events, strict=True) if e["id"] == event["id"])

    async def expect(self, subject: Any, *types: str, timeout: float = 10) -> list[dict[str, Any]]:
        """Wait until the events about `subject` include `types` (with multiplicity); return all of them."""
        import asyncio
        from collections import Counter

        want = Counter(self._type(t) for t in types)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await self.drain()
            got = self.of(subject)
            have = Counter(e["type"] for e in got)
            if all(have[t] >= n for t, n in want.items()):
                return got
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"waited {timeout}s for {dict(want)} about {subject}; got {dict(have)}")
            await asyncio.sleep(0.05)

    async def one(self, subject: Any, type: str, *, sequence: int | None = None, timeout: float = 10) -> dict[str, Any]:
        """Wait for the event of `type` about `subject` (with `sequence`, when given) and return it."""
        import asyncio

        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await self.drain()
            found = [e for e in self.of(subject, type) if sequence is None or e.get("sequence") == sequence]
            if found:
                return found[0]
            if asyncio.get_running_loop().time() > deadline:
                seen = [(e["type"], e.get("sequence")) for e in self.of(subject)]
                raise AssertionError(f"waited {timeout}s for {type} #{sequence} about {subject}; got {seen}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def listening(amqp: Any, exchange: str, entity: str, binding: str | None = None) -> Any:
    """An `EventProbe` bound to `exchange` for `<entity>.#` (or `binding`); bind before acting."""
    channel = await amqp.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(await channel.get_exchange(exchange), binding or f"{entity}.#")
    try:
        yield EventProbe(queue, entity)
    finally:
        await channel.close()
