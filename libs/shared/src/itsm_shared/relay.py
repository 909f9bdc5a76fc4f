"""The outbox relay: publishes committed outbox rows, on an event loop that no request shares.

Requests saturating a service's event loop would otherwise delay its events by seconds: each step of a relay
pass (claim, publish, confirm, mark) waits for a turn of a loop that dozens of requests share. A service runs its
relay in a process of its own (`itsm_shared.relay_process`), with its own PostgreSQL connection and its own broker
connection, so no request holds the loop or the interpreter's lock it needs. A transaction that wrote outbox rows
wakes it once committed (`itsm_shared.outbox.written`); it also sweeps every `outbox_sweep_seconds`, for rows
another process committed and did not publish.

A pass claims a batch of due rows (`FOR UPDATE SKIP LOCKED`: replicas share the work), publishes all of it at
once, persistent and mandatory, with the service's broker user as AMQP `user_id` (RabbitMQ checks it), and marks
each row by its own publisher confirm: one UPDATE for the confirmed rows, one for the failed ones, which are
retried later with a growing delay. A message the broker returns (unroutable) is a failure. With several broker
URLs (a cluster) the relay connects to the first that answers and moves on when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiormq
import asyncpg
from aiormq.abc import AbstractConnection
from pamqp import commands as spec
from prometheus_client import Counter, Gauge

from itsm_shared import faults
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE
from itsm_shared.settings import ServiceSettings, asyncpg_dsn

log = logging.getLogger(__name__)

PUBLISHED = Counter("itsm_outbox_published_total", "Events published and confirmed by the broker")
FAILED = Counter("itsm_outbox_publish_failures_total", "Publish attempts that failed", ["reason"])
PENDING = Gauge("itsm_outbox_pending", "Outbox rows not yet published at the last sweep")

# The relays this process wakes after a commit that wrote outbox rows (`outbox.written`): OutboxRelay.start and
# RelayProcess.start add their wake, stop takes it away.
RELAYS: set[Callable[[], None]] = set()

MAX_BACKOFF = timedelta(seconds=60)
KEEP_PUBLISHED = timedelta(days=7)
HOUSEKEEPING_SECONDS = 30.0
PUBLISH_TIMEOUT = 10.0

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
DELETE_OLD = "DELETE FROM outbox WHERE published_at < $1"
COUNT_PENDING = "SELECT count(*) FROM outbox WHERE published_at IS NULL"


def wake_relays() -> None:
    for wake in tuple(RELAYS):
        wake()


def backoff(attempts: int) -> timedelta:
    return min(timedelta(milliseconds=250 * 2 ** min(attempts, 10)), MAX_BACKOFF)


def application_name(service: str) -> str:
    """How the relay's database connection shows in pg_stat_activity."""
    return f"itsm-outbox-relay-{service}"


class OutboxRelay:
    def __init__(
        self,
        *,
        service: str,
        settings: ServiceSettings,
        user_id: str | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.user_id = user_id
        self.amqp_urls: Sequence[str] = settings.broker_urls()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._db: Any = None  # asyncpg.Connection
        self._amqp: AbstractConnection | None = None
        self._channel: aiormq.Channel | None = None
        self._last_housekeeping = 0.0

    # ------------------------------------------------------------ lifecycle, on the loop it runs on

    async def run(self) -> None:
        """The relay on the running loop (the relay process's), until `stop_soon`."""
        worker = asyncio.create_task(self._work(), name="outbox-relay")
        await self._stop.wait()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        await self._close_broker()
        await self._close_db()

    def start(self) -> None:
        """`run` as a task of the running loop, woken by this process's commits (tests)."""
        self._task = asyncio.create_task(self.run(), name=f"outbox-relay-{self.service}")
        RELAYS.add(self.wake)

    async def stop(self) -> None:
        RELAYS.discard(self.wake)
        self.stop_soon()
        if self._task is not None:
            await self._task

    def stop_soon(self) -> None:
        """End `run`: the pass under way is cut short, its rows published again later."""
        self._stop.set()

    def wake(self) -> None:
        """A pass soon. Already woken: the pass to come starts after this call, so it sees what committed before
        it."""
        self._wake.set()

    async def _work(self) -> None:
        delay = 0.25
        self._wake.set()  # a first pass at once: it connects and publishes what waits
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
                delay = 0.25
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay pass failed: %s: %s", type(exc).__name__, exc)
                await self._close_db()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                self._wake.set()  # try again at once after the pause

    async def _database(self) -> Any:
        if self._db is None or self._db.is_closed():
            self._db = await asyncpg.connect(
                asyncpg_dsn(self.settings.database_url),
                server_settings={
                    "statement_timeout": str(self.settings.db_statement_timeout_ms),
                    "application_name": application_name(self.service),
                },
            )
        return self._db

    async def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close(timeout=2)

    async def _broker(self) -> aiormq.Channel:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        await self._close_broker()
        errors = []
        for url in self.amqp_urls:
            try:
                self._amqp = await aiormq.connect(url)
                channel = await self._amqp.channel(publisher_confirms=True, on_return_raises=True)
                assert isinstance(channel, aiormq.Channel)  # whose basic_publish takes `wait`
                self._channel = channel
                return channel
            except Exception as exc:  # try the next node
                errors.append(f"{type(exc).__name__}: {exc}")
                await self._close_broker()
        raise ConnectionError(f"no broker node answers: {'; '.join(errors)}")

    async def _close_broker(self) -> None:
        connection, self._amqp, self._channel = self._amqp, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    # ------------------------------------------------------------ one pass

    async def publish_batch(self) -> int:
        """Publish one batch of due rows; returns how many were confirmed."""
        db = await self._database()
        async with db.transaction():
            rows = await db.fetch(CLAIM, self.settings.outbox_batch_size)
            if not rows:
                return 0
            faults.reach("outbox.before_publish")
            try:
                channel = await self._broker()
            except Exception as exc:
                results: list[BaseException | None] = [exc] * len(rows)
            else:
                gathered = await asyncio.gather(*(self._publish(channel, row) for row in rows), return_exceptions=True)
                results = [r if isinstance(r, BaseException) else None for r in gathered]
            sent = [row["id"] for row, result in zip(rows, results, strict=True) if result is None]
            failed = [(row, r) for row, r in zip(rows, results, strict=True) if r is not None]
            if sent:
                await db.execute(MARK_SENT, sent)
            if failed:
                await self._mark_failed(db, failed)
        PUBLISHED.inc(len(sent))
        return len(sent)

    async def _publish(self, channel: aiormq.Channel, row: Any) -> None:
        properties = spec.Basic.Properties(
            content_type=CLOUDEVENTS_CONTENT_TYPE,
            delivery_mode=2,
            message_id=str(row["id"]),
            correlation_id=row["correlation_id"],
            message_type=row["type"],
            user_id=self.user_id,
        )
        # wait=False: the frames are queued for the connection's writer without waiting for it to drain them under
        # the channel's lock, so a batch goes out in one turn; each publish still waits for its own confirm.
        await channel.basic_publish(
            row["body"].encode(),
            exchange=self.settings.exchange,
            routing_key=row["routing_key"],
            properties=properties,
            mandatory=True,
            timeout=PUBLISH_TIMEOUT,
            wait=False,
        )

    async def _mark_failed(self, db: Any, failed: list[tuple[Any, BaseException]]) -> None:
        now = datetime.now(UTC)
        for row, exc in failed:
            reason = type(exc).__name__
            FAILED.labels(reason).inc()
            extra = {"event_id": str(row["id"]), "reason": reason, "attempts": row["attempts"] + 1}
            log.warning("outbox publish failed", extra=extra)
        if any(isinstance(exc, ConnectionError | aiormq.exceptions.AMQPError | OSError) for _, exc in failed):
            await self._close_broker()  # reconnect, maybe to another node, on the next pass
        await db.execute(
            MARK_FAILED,
            [row["id"] for row, _ in failed],
            [f"{type(exc).__name__}: {exc}"[:2000] for _, exc in failed],
            [now + backoff(row["attempts"] + 1) for row, _ in failed],
        )

    async def _housekeeping(self) -> None:
        db = await self._database()
        await db.execute(DELETE_OLD, datetime.now(UTC) - KEEP_PUBLISHED)
        PENDING.set(await db.fetchval(COUNT_PENDING) or 0)
