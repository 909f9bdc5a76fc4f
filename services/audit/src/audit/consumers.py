"""Ingest: the consumer of `audit.ingest`, a durable quorum queue bound to every event (`#`).

The shared `inbox.subscribe` handles one message per transaction through FastStream's per-message pipeline;
the log has to keep up with every producer at once, so it consumes differently, in three parts:

- the queue is the shared shape (`itsm_shared.broker.event_queue`), registered on the service's FastStream
  broker without a handler: the broker declares and binds it, and it is in /asyncapi.json like any other;
- the messages arrive on a channel of the ingest's own (aio-pika, prefetch `consumer_prefetch`): parsing a
  message and handing it to the batch writer is all a delivery costs, and nothing is acknowledged yet;
- the batch writer (`audit.batch`) stores batches in one transaction each (`audit.ingest.store_batch`); once
  committed, the acker acknowledges the longest run of settled deliveries with one `basic.ack(multiple)`.

What is not a CloudEvent, or cannot be stored, is parked in `<queue>.dlq` with its reason
(`itsm_shared.inbox.park`) and acknowledged in turn. While the database is away the writer retries the same
batch with backoff, holding its messages unacknowledged: nothing is rejected into the delivery limit, and the
prefetch bounds what is held. A redelivery after a lost acknowledgement is a duplicate, and the log skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from faststream.rabbit import RabbitBroker
from itsm_shared.app import Runtime
from itsm_shared.broker import event_queue, events_exchange
from itsm_shared.inbox import park
from itsm_shared.settings import ServiceSettings
from prometheus_client import Counter

from audit.batch import Acker, BatchWriter, StoreBatch, committing
from audit.config import AuditSettings, get_settings
from audit.errors import InvalidEvent
from audit.ingest import Duplicate, Outcome, Stored, Unstorable, parse_incoming

log = logging.getLogger(__name__)

QUEUE = "audit.ingest"
INGEST = "audit_ingest"

STORED = Counter("itsm_audit_stored_total", "Events appended to the audit chain")
DUPLICATES = Counter("itsm_audit_duplicates_total", "Deliveries of events already on the chain")
PARKED = Counter("itsm_audit_parked_total", "Messages parked in the dead-letter queue", ["reason"])


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
            item = parse_incoming(message.body)
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
        store=committing(rt.sessions),
        ready=rt.broker_started,
    )
    rt.extras[INGEST] = ingest
    return [ingest.declare()]


async def run_ingest(rt: Runtime) -> None:
    ingest: Ingest = rt.extras[INGEST]
    await ingest.run()
