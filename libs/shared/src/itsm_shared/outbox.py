"""Transactional outbox: events are rows written in the caller's transaction; a relay publishes them.

The relay wakes on PostgreSQL NOTIFY (sent inside the writing transaction, so delivered only after commit)
and sweeps periodically as a safety net. Rows are claimed with FOR UPDATE SKIP LOCKED so replicas share the
work, published persistent and mandatory with publisher confirms, and marked sent only once confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from faststream.rabbit import RabbitBroker
from prometheus_client import Counter, Gauge
from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from itsm_shared import faults
from itsm_shared.db import asyncpg_dsn, driver_connection, transaction
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, new_event, routing_key

__all__ = ["channel_for", "routing_key"]
from itsm_shared.models import OutboxMessage
from itsm_shared.settings import ServiceSettings
from itsm_shared.trust import connection_user

log = logging.getLogger(__name__)

PUBLISHED = Counter("itsm_outbox_published_total", "Events published and confirmed by the broker")
FAILED = Counter("itsm_outbox_publish_failures_total", "Publish attempts that failed", ["reason"])
PENDING = Gauge("itsm_outbox_pending", "Outbox rows not yet published at the last sweep")

MAX_BACKOFF = timedelta(seconds=60)
KEEP_PUBLISHED = timedelta(days=7)
HOUSEKEEPING_SECONDS = 30.0


def channel_for(service: str) -> str:
    return f"itsm_outbox_{service}"


# One statement for any number of events: the rows, and the NOTIFY that wakes the relays once they commit.
APPEND = """
WITH appended AS (
    INSERT INTO outbox (id, routing_key, payload)
    SELECT * FROM unnest($1::uuid[], $2::varchar[], $3::jsonb[])
    RETURNING 1
)
SELECT pg_notify($4, '')
"""


async def append(session: AsyncSession, *events: dict[str, Any]) -> None:
    """Add the events to the caller's transaction; the relay is woken when that transaction commits."""
    if not events:
        return
    connection = await driver_connection(session)
    await connection.execute(
        APPEND,
        [uuid.UUID(str(e["id"])) for e in events],
        [routing_key(e["type"]) for e in events],
        [json.dumps(e) for e in events],
        channel_for(events[0]["source"].rsplit("/", 1)[-1]),
    )


async def emit(session: AsyncSession, **event: Any) -> None:
    """`append` of a `new_event(...)` built from these fields."""
    await append(session, new_event(**event))


# The relay's statements, on the session's asyncpg connection: a batch claimed (SKIP LOCKED: replicas share the
# work) and its payloads as stored text, published as they are; then one UPDATE for the sent, one for the failed.
CLAIM = """
SELECT id, routing_key, attempts, payload::text AS body, payload ->> 'type' AS type,
       payload ->> 'correlationid' AS correlation_id
FROM outbox
WHERE published_at IS NULL AND next_attempt_at <= now()
ORDER BY created_at
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
MARK_SENT = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::uuid[])"
MARK_FAILED = """
UPDATE outbox SET attempts = attempts + 1, last_error = f.error, next_attempt_at = f.next_attempt_at
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS f(id, error, next_attempt_at)
WHERE outbox.id = f.id
"""


def backoff(attempts: int) -> timedelta:
    return min(timedelta(milliseconds=250 * 2 ** min(attempts, 10)), MAX_BACKOFF)


class OutboxRelay:
    def __init__(
        self,
        *,
        service: str,
        settings: ServiceSettings,
        sessions: async_sessionmaker[AsyncSession],
        broker: RabbitBroker,
        ready: asyncio.Event | None = None,
    ) -> None:
        self.service = service
        self._ready = ready
        self.settings = settings
        self.sessions = sessions
        self.broker = broker
        # Every event goes out with the AMQP user_id of the service's broker user: RabbitMQ refuses it unless that
        # is the user publishing, so consumers know who published it (itsm_shared.trust).
        self.user_id = connection_user(settings.amqp_url)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_housekeeping = 0.0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="outbox-listen"),
            asyncio.create_task(self._loop(), name="outbox-relay"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await asyncpg.connect(asyncpg_dsn(self.settings.database_url))
                try:
                    closed = asyncio.Event()
                    conn.add_termination_listener(lambda *_, closed=closed: closed.set())
                    await conn.add_listener(channel_for(self.service), lambda *_: self._wake.set())
                    delay = 0.5
                    self._wake.set()  # catch up on whatever committed while we were not listening
                    await closed.wait()
                finally:
                    with contextlib.suppress(Exception):
                        await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox listener lost its connection: %s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _loop(self) -> None:
        if self._ready is not None:
            await self._ready.wait()  # publishing before the topology exists would only fail and back off
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.outbox_sweep_seconds)
            self._wake.clear()
            try:
                while await self.publish_batch() == self.settings.outbox_batch_size:
                    pass
                if time.monotonic() - self._last_housekeeping > HOUSEKEEPING_SECONDS:
                    self._last_housekeeping = time.monotonic()
                    await self._housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay pass failed: %s", type(exc).__name__)

    async def publish_batch(self) -> int:
        """Publish one batch of due rows; returns how many were confirmed."""
        async with transaction(self.sessions) as session:
            connection = await driver_connection(session)
            rows = await connection.fetch(CLAIM, self.settings.outbox_batch_size)
            if not rows:
                return 0
            faults.reach("outbox.before_publish")
            # All of the batch in flight at once, each row marked by its own confirm: one confirm round trip
            # per batch instead of one per event, which matters when the event loop is busy with requests.
            results = await asyncio.gather(*(self._publish(row) for row in rows), return_exceptions=True)
            sent = [row["id"] for row, result in zip(rows, results, strict=True) if result is None]
            failed = [(row, r) for row, r in zip(rows, results, strict=True) if isinstance(r, BaseException)]
            if sent:
                await connection.execute(MARK_SENT, sent)
            if failed:
                for row, exc in failed:
                    FAILED.labels(type(exc).__name__).inc()
                    log.warning(
                        "outbox publish failed",
                        extra={
                            "event_id": str(row["id"]),
                            "reason": type(exc).__name__,
                            "attempts": row["attempts"] + 1,
                        },
                    )
                now = datetime.now(UTC)
                await connection.execute(
                    MARK_FAILED,
                    [row["id"] for row, _ in failed],
                    [f"{type(exc).__name__}: {exc}"[:2000] for _, exc in failed],
                    [now + backoff(row["attempts"] + 1) for row, _ in failed],
                )
        PUBLISHED.inc(len(sent))
        return len(sent)

    async def _publish(self, row: Any) -> None:
        await self.broker.publish(
            row["body"].encode(),
            exchange=self.settings.exchange,
            routing_key=row["routing_key"],
            persist=True,
            mandatory=True,
            message_id=str(row["id"]),
            correlation_id=row["correlation_id"],
            content_type=CLOUDEVENTS_CONTENT_TYPE,
            message_type=row["type"],
            user_id=self.user_id,
            timeout=10,
        )

    async def _housekeeping(self) -> None:
        async with self.sessions() as session, session.begin():
            cutoff = datetime.now(UTC) - KEEP_PUBLISHED
            await session.execute(delete(OutboxMessage).where(col(OutboxMessage.published_at) < cutoff))
            pending = await session.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
            PENDING.set(pending or 0)
