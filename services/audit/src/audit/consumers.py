"""Ingest: the consumer of `audit.ingest`, a durable quorum queue bound to every event (`#`).

The shared `inbox.subscribe` handles one message per transaction through FastStream's per-message pipeline;
the log has to keep up with every producer at once, so it consumes differently, in three parts:

- the queue is the shared shape (`itsm_shared.broker.event_queue`), registered on the service's FastStream
  broker without a handler: the broker declares and binds it, and it is in /asyncapi.json like any other;
- the messages arrive on a channel of the ingest's own (aio-pika, prefetch `consumer_prefetch`): parsing a
  message and handing it to the batch writer is all a delivery costs, and nothing is acknowledged yet;
- the batch writer stores up to `audit_batch_size` events (or what came within `audit_batch_wait_ms`) in
  one transaction; once committed, the acker acknowledges the longest run of settled deliveries with one
  `basic.ack(multiple)`.

What is not a CloudEvent, or cannot be stored, is parked in `<queue>.dlq` with its reason
(`itsm_shared.inbox.park`) and acknowledged in turn. While the database is away the writer retries the same
batch with backoff, holding its messages unacknowledged: nothing is rejected into the delivery limit, and the
prefetch bounds what is held. A redelivery after a lost acknowledgement is a duplicate, and the log skips it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from faststream.rabbit import RabbitBroker
from itsm_shared.app import Runtime
from itsm_shared.broker import event_queue, events_exchange
from itsm_shared.inbox import park
from itsm_shared.settings import ServiceSettings
from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from audit import service
from audit.config import AuditSettings, get_settings
from audit.service import Duplicate, Incoming, InvalidEvent, Outcome, Stored, Unstorable

log = logging.getLogger(__name__)

QUEUE = "audit.ingest"
INGEST = "audit_ingest"

STORED = Counter("itsm_audit_stored_total", "Events appended to the audit chain")
DUPLICATES = Counter("itsm_audit_duplicates_total", "Deliveries of events already on the chain")
PARKED = Counter("itsm_audit_parked_total", "Messages parked in the dead-letter queue", ["reason"])
RETRIES = Counter("itsm_audit_batch_retries_total", "Batch writes retried after a failure")
BATCH_SIZE = Histogram("itsm_audit_batch_size", "Events per stored batch", buckets=(1, 5, 10, 25, 50, 100, 250, 500))

StoreBatch = Callable[[Sequence[Incoming]], Awaitable[list[Outcome]]]
Settle = Callable[[list[tuple[Any, Outcome]]], Awaitable[None]]


def store_with(sessions: async_sessionmaker[AsyncSession]) -> StoreBatch:
    async def store(batch: Sequence[Incoming]) -> list[Outcome]:
        async with sessions() as session:
            return await service.store_batch(session, batch)

    return store


# ---------------------------------------------------------------- the batch writer


@dataclass(slots=True)
class _Pending:
    item: Incoming
    token: Any  # whatever the caller settles by (the delivery)
    arrived: float


class BatchWriter:
    """Group commit for the chain: items are added without waiting; each committed batch is handed to
    `settle` with the outcome of every item, in the order they were added."""

    def __init__(
        self, store: StoreBatch, settle: Settle, *, max_batch: int, max_wait: float, retry_max_seconds: float = 5.0
    ) -> None:
        self._store = store
        self._settle = settle
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.retry_max_seconds = retry_max_seconds
        self._pending: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()

    def add(self, item: Incoming, token: Any) -> None:
        self._pending.append(_Pending(item, token, time.monotonic()))
        self._arrived.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()

    def __len__(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
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
            outcomes = await self._write([p.item for p in batch])
            try:
                await self._settle([(p.token, o) for p, o in zip(batch, outcomes, strict=True)])
            except Exception:
                log.exception("settling a stored batch failed; its deliveries come back as duplicates")

    async def _write(self, items: list[Incoming]) -> list[Outcome]:
        delay = 0.1
        while True:
            try:
                outcomes = await self._store(items)
            except asyncio.CancelledError:
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


# ---------------------------------------------------------------- acknowledgements, in order, many at once


@dataclass
class _ChannelTags:
    outstanding: deque[int] = field(default_factory=deque)  # delivery tags not yet acknowledged, ascending
    messages: dict[int, AbstractIncomingMessage] = field(default_factory=dict)
    settled: dict[int, bool] = field(default_factory=dict)  # tag -> may the multiple-ack name it


def _tag(message: AbstractIncomingMessage) -> int:
    tag = message.delivery_tag
    if tag is None:  # only a no-ack delivery has none, and the ingest channel acknowledges
        raise ValueError("delivery without a tag")
    return tag


class Acker:
    """`basic.ack(multiple=True)` for the longest prefix of settled deliveries of each channel: one frame per
    batch instead of one per message. A delivery is acknowledged only once it and every delivery before it
    on its channel are settled (stored, a duplicate, or parked), so an ack never covers a message still in
    flight. Delivery tags are per channel; a channel that closed takes its deliveries back to the queue."""

    def __init__(self) -> None:
        self._channels: dict[int, tuple[Any, _ChannelTags]] = {}
        self._lock = asyncio.Lock()

    def delivered(self, message: AbstractIncomingMessage) -> None:
        channel = message.channel
        tags = self._channels.setdefault(id(channel), (channel, _ChannelTags()))[1]
        tag = _tag(message)
        if tags.outstanding and tag < tags.outstanding[-1]:
            tags.outstanding.insert(bisect.bisect(tags.outstanding, tag), tag)
        else:
            tags.outstanding.append(tag)
        tags.messages[tag] = message

    def settle(self, message: AbstractIncomingMessage, *, acknowledge: bool = True) -> None:
        """Mark a delivery settled; `acknowledge=False` when it was settled otherwise (returned to the queue)."""
        for _, tags in self._channels.values():
            if tags.messages.get(_tag(message)) is message:
                tags.settled[_tag(message)] = acknowledge
                return

    async def flush(self) -> None:
        async with self._lock:  # acks leave in ascending order: a later multiple-ack never overtakes an earlier
            for key, (channel, tags) in list(self._channels.items()):
                if channel.is_closed:  # the broker has requeued what it had not been told about
                    del self._channels[key]
                    continue
                last: AbstractIncomingMessage | None = None
                while tags.outstanding and tags.outstanding[0] in tags.settled:
                    tag = tags.outstanding.popleft()
                    message = tags.messages.pop(tag)
                    if tags.settled.pop(tag):
                        last = message
                if last is None:
                    continue
                try:
                    await last.ack(multiple=True)
                except Exception as exc:
                    # The channel is gone: the broker requeues everything it had not been told about.
                    log.warning("acknowledgement failed", extra={"error": type(exc).__name__})


# ---------------------------------------------------------------- the consumer


class Ingest:
    def __init__(
        self,
        *,
        settings: ServiceSettings,
        audit: AuditSettings,
        broker: RabbitBroker,
        store: StoreBatch,
        ready: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.ready = ready
        self.queue = f"{settings.queue_prefix}{QUEUE}"
        self.prefetch = audit.consumer_prefetch
        self.acks = Acker()
        self.writer = BatchWriter(
            store,
            self._settle,
            max_batch=audit.audit_batch_size,
            max_wait=audit.audit_batch_wait_ms / 1000,
            retry_max_seconds=audit.audit_retry_max_seconds,
        )

    def declare(self) -> str:
        """The queue on the service's broker, without a handler: declared and bound when the broker starts,
        and described in /asyncapi.json. Returns its name."""
        self.broker.subscriber(
            event_queue(self.settings, self.queue, "#"),
            events_exchange(self.settings),
            title=self.queue,
            description="Every event on the exchange, appended once to the hash-chained audit log",
        )
        return self.queue

    async def run(self) -> None:
        if self.ready is not None:
            await self.ready.wait()  # the broker is connected (parking publishes through it), the topology is there
        connection = await self._connect()
        writer = asyncio.create_task(self.writer.run(), name="audit-batch-writer")
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self.prefetch)
            shape = event_queue(self.settings, self.queue, "#")
            queue = await channel.declare_queue(self.queue, durable=True, arguments=dict(shape.arguments or {}))
            await queue.bind(self.settings.exchange, routing_key="#")
            await queue.consume(self._on_message)
            log.info("audit ingest consuming", extra={"queue": self.queue, "prefetch": self.prefetch})
            await writer
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            with contextlib.suppress(Exception):
                await connection.close()  # whatever is unacknowledged goes back to the queue

    async def _connect(self) -> AbstractRobustConnection:
        delay = 0.5
        while True:
            try:
                connection: AbstractRobustConnection = await aio_pika.connect_robust(self.settings.amqp_url)
                return connection
            except (OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning("broker unavailable for ingest, retrying: %s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.acks.delivered(message)
        try:
            item = service.parse_incoming(message.body)
        except InvalidEvent as exc:
            PARKED.labels("invalid").inc()
            await self._park(message, str(exc))
            await self.acks.flush()
            return
        self.writer.add(item, message)

    async def _settle(self, results: list[tuple[Any, Outcome]]) -> None:
        for message, outcome in results:
            if isinstance(outcome, Unstorable):
                PARKED.labels("unstorable").inc()
                await self._park(message, outcome.reason)
                continue
            if isinstance(outcome, Stored):
                STORED.inc()
            elif isinstance(outcome, Duplicate):
                DUPLICATES.inc()
            self.acks.settle(message)
        await self.acks.flush()

    async def _park(self, message: AbstractIncomingMessage, reason: str) -> None:
        try:
            await park(self.broker, self.settings, self.queue, message, reason)
        except Exception:
            log.exception("could not park message; returning it to the queue", extra={"queue": self.queue})
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            self.acks.settle(message, acknowledge=False)
            return
        self.acks.settle(message)


def register(rt: Runtime) -> list[str]:
    ingest = Ingest(
        settings=rt.settings,
        audit=get_settings(),
        broker=rt.broker,
        store=store_with(rt.sessions),
        ready=rt.broker_started,
    )
    rt.extras[INGEST] = ingest
    return [ingest.declare()]


async def run_ingest(rt: Runtime) -> None:
    ingest: Ingest = rt.extras[INGEST]
    await ingest.run()
