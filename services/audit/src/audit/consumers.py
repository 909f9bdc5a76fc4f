"""Ingest: one subscriber on `audit.ingest`, bound to every event (`#`), feeding a batch writer.

The shared `inbox.subscribe` handles one message per transaction; the log instead stores many per transaction
(that is what keeps it ahead of every producer at once), so it has this subscriber of its own, on the same
queue shape (`itsm_shared.broker.event_queue`) and parking the same way (`itsm_shared.inbox.park_and_ack`).

The broker runs each delivery in a task of its own. A task parses its message, hands it to the writer and
waits; the writer collects up to `audit_batch_size` messages (or what came within `audit_batch_wait_ms`),
stores them in one transaction, and only then does each task acknowledge its message. While the database is
away the writer retries the same batch with backoff, holding its messages unacknowledged: nothing is
rejected into the delivery limit, and the channel's prefetch bounds what is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from faststream.rabbit import RabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from itsm_shared.app import Runtime
from itsm_shared.broker import event_queue, events_exchange
from itsm_shared.inbox import park_and_ack
from itsm_shared.settings import ServiceSettings
from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from audit import service
from audit.config import AuditSettings, get_settings
from audit.service import Duplicate, Incoming, InvalidEvent, Outcome, Stored, Unstorable

log = logging.getLogger(__name__)

QUEUE = "audit.ingest"
WRITER = "audit_writer"

STORED = Counter("itsm_audit_stored_total", "Events appended to the audit chain")
DUPLICATES = Counter("itsm_audit_duplicates_total", "Deliveries of events already on the chain")
PARKED = Counter("itsm_audit_parked_total", "Messages parked in the dead-letter queue", ["reason"])
RETRIES = Counter("itsm_audit_batch_retries_total", "Batch writes retried after a failure")
BATCH_SIZE = Histogram("itsm_audit_batch_size", "Events per stored batch", buckets=(1, 5, 10, 25, 50, 100, 250, 500))

StoreBatch = Callable[[Sequence[Incoming]], Awaitable[list[Outcome]]]


@dataclass(slots=True)
class _Pending:
    item: Incoming
    arrived: float
    done: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class BatchWriter:
    """Group commit for the chain: `submit` resolves once the event's batch is committed (or refused)."""

    def __init__(self, store: StoreBatch, *, max_batch: int, max_wait: float, retry_max_seconds: float = 5.0) -> None:
        self._store = store
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.retry_max_seconds = retry_max_seconds
        self._pending: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._closed = False

    @classmethod
    def for_sessions(cls, sessions: async_sessionmaker[AsyncSession], settings: AuditSettings) -> BatchWriter:
        async def store(batch: Sequence[Incoming]) -> list[Outcome]:
            async with sessions() as session:
                return await service.store_batch(session, batch)

        return cls(
            store,
            max_batch=settings.audit_batch_size,
            max_wait=settings.audit_batch_wait_ms / 1000,
            retry_max_seconds=settings.audit_retry_max_seconds,
        )

    async def submit(self, item: Incoming) -> Outcome:
        """Wait until the item's batch is stored; the outcome says how. Cancelled when the writer stops first."""
        if self._closed:
            raise RuntimeError("the audit batch writer has stopped")
        pending = _Pending(item, time.monotonic())
        self._pending.append(pending)
        self._arrived.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        return await pending.done

    async def run(self) -> None:
        try:
            while True:
                await self._arrived.wait()
                linger = self._pending[0].arrived + self.max_wait - time.monotonic()
                if len(self._pending) < self.max_batch and linger > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), linger)
                batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
                if len(self._pending) < self.max_batch:
                    self._full.clear()
                if not self._pending:
                    self._arrived.clear()
                outcomes = await self._write(batch)
                for pending, outcome in zip(batch, outcomes, strict=True):
                    if not pending.done.done():
                        pending.done.set_result(outcome)
        finally:
            self._closed = True
            while self._pending:  # their messages stay unacknowledged and come back to the next consumer
                self._pending.popleft().done.cancel()

    async def _write(self, batch: list[_Pending]) -> list[Outcome]:
        delay = 0.1
        items = [p.item for p in batch]
        while True:
            try:
                outcomes = await self._store(items)
            except asyncio.CancelledError:
                for pending in batch:
                    pending.done.cancel()
                raise
            except Exception as exc:
                # Whatever failed, the batch is still whole and unacknowledged: try it again, never drop it.
                RETRIES.inc()
                log.warning(
                    "audit batch not stored, retrying",
                    extra={"error": f"{type(exc).__name__}: {str(exc)[:300]}", "events": len(items), "delay": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)
                continue
            BATCH_SIZE.observe(len(items))
            return outcomes


def subscribe_ingest(broker: RabbitBroker, settings: ServiceSettings, writer: BatchWriter) -> str:
    """Register the ingest subscriber on `broker`; returns the (prefixed) queue name."""
    queue = f"{settings.queue_prefix}{QUEUE}"

    async def ingest(msg: RabbitMessage) -> None:
        try:
            item = service.parse_incoming(msg.body)
        except InvalidEvent as exc:
            PARKED.labels("invalid").inc()
            await park_and_ack(broker, settings, queue, msg, str(exc))
            return
        outcome = await writer.submit(item)
        if isinstance(outcome, Unstorable):
            PARKED.labels("unstorable").inc()
            await park_and_ack(broker, settings, queue, msg, outcome.reason)
            return
        if isinstance(outcome, Stored):
            STORED.inc()
        elif isinstance(outcome, Duplicate):
            DUPLICATES.inc()
        try:
            await msg.ack()
        except Exception as exc:
            # The channel went away after the commit: the broker redelivers, and the redelivery is a duplicate.
            log.warning("ack after commit failed", extra={"error": type(exc).__name__, "event_id": str(item.event_id)})

    broker.subscriber(
        event_queue(settings, queue, "#"),
        events_exchange(settings),
        title=queue,
        description="Every event on the exchange, appended once to the hash-chained audit log",
    )(ingest)
    return queue


def register(rt: Runtime) -> list[str]:
    writer = BatchWriter.for_sessions(rt.sessions, get_settings())
    rt.extras[WRITER] = writer
    return [subscribe_ingest(rt.broker, rt.settings, writer)]


async def run_writer(rt: Runtime) -> None:
    writer: BatchWriter = rt.extras[WRITER]
    with contextlib.suppress(asyncio.CancelledError):
        await writer.run()
