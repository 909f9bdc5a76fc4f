"""Batch consumption: many messages per transaction, for the consumers that must keep up with every producer at
once (the audit log, problem's incident read model).

`inbox.subscribe` handles one message per transaction through FastStream's per-message pipeline, which alone
costs about half the raw consume rate. A `BatchConsumer`:

- declares its queue on the service's FastStream broker without a handler: the shape of `inbox.subscribe`'s
  queues (`broker.event_queue`: quorum, dead-letter exchange, delivery limit), declared and bound when the
  broker starts, its `<queue>.dlq` beside it, and described in /asyncapi.json;
- consumes it on a channel of its own (aio-pika, `prefetch`): a delivery costs parsing the message and queuing
  it, nothing is acknowledged yet; what does not parse, or comes from a publisher the broker does not vouch for
  (`itsm_shared.trust`, as in `inbox.subscribe`), is parked at once (`inbox.park`);
- collects up to `max_batch` messages, or what came within `max_wait` seconds of the first, and hands them to
  `handle(session, items)` in ONE transaction of the seam (`db.transaction`). With an inbox (`event_id`), the
  batch's event ids are claimed first in one statement (`inbox.claim_all`) and only the new ones reach the
  handler: a redelivery is a duplicate that changes nothing. The handler may return one outcome per item;
  `Rejected(reason)` parks that message (and takes back its inbox claim);
- acknowledges only after that commit, with one `basic.ack(multiple)` per run of settled deliveries (`Acker`).

Failures. While the database is away (`inbox.is_transient`) the same batch is tried again with backoff, holding
its messages unacknowledged (for `retry_for` seconds, `None`: as long as it takes), so no delivery is spent.
Any other failure of a batch is the fault of one of its messages or of none: the batch is tried again in one
transaction, split in halves, each half in a savepoint, down to the single messages that fail; the rest commit.
A message that fails on its own is parked at once when its failure is permanent (`inbox.PermanentError`, or
what `permanent` says), else returned to the queue until the delivery limit, then parked: the rules of
`inbox.subscribe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from faststream.rabbit import RabbitBroker
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from itsm_shared.broker import connect_robust, event_queue, events_exchange
from itsm_shared.db import transaction
from itsm_shared.events import CloudEvent
from itsm_shared.group_commit import AFTER_COMMIT as AFTER_COMMIT
from itsm_shared.group_commit import Acker, BatchWriter
from itsm_shared.inbox import TRANSIENT_RETRY_SECONDS, PermanentError, claim_all, is_transient, park
from itsm_shared.inbox import validation_summary as _summary
from itsm_shared.settings import ServiceSettings
from itsm_shared.trust import Delivery, refusal

if TYPE_CHECKING:
    from itsm_shared.app import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=CloudEvent[Any])

# How long a batch waits for more messages after its first: 50 ms. With 5, at 80 events/s a batch was mostly one
# event and a transaction each; two alternated pairs of bench/incident_create.py with 25 ms for problem and webhook:
# their CPU per event at that rate 40 % lower, the whole stack's per create 10 % lower when saturated. A batch's own
# cost (its transaction, claim and statements) outweighs its events': from 80 to 280 events/s each consumer used the
# same share of a core, about one batch every 25 ms plus its storing. At 50 ms (audit's too), three alternated pairs
# at 160-250 creates/s: each consumer's CPU 15-19 % lower (as a share of the incident process's in the same run),
# the stack's 6 %; a consumer's view is up to 25 ms later. Against the bare baseline (three more alternated pairs of
# bench/incident_create.py --rounds 1, saturated, 20:24-20:33 UTC): the three consumers' CPU per create 2.00x the
# bare app's and PostgreSQL's at 50 ms, 2.23x at 25 ms (means; lower in 2 of 3 pairs); the whole stack's (8.03x
# against 7.87x) and the create's ratio (0.139 against 0.145) did not come out of the machine's drift.
BATCH_WAIT = 0.05
SETTLED = ("applied", "duplicate", "parked", "returned")
MESSAGES = Counter("itsm_consumer_batch_messages_total", "Messages settled by batch consumers", ["queue", "outcome"])
RETRIES = Counter("itsm_consumer_batch_retries_total", "Batches tried again after a transient failure", ["queue"])
ISOLATIONS = Counter("itsm_consumer_batch_isolations_total", "Batches split to isolate a failing message", ["queue"])
BATCH_SIZE = Histogram(
    "itsm_consumer_batch_size", "Messages per batch", ["queue"], buckets=(1, 5, 10, 25, 50, 100, 250, 500)
)


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Applied:
    """The handler's effect for this message committed."""


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Seen before (its event id is in the inbox, or the handler's own record of it): nothing done again."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """The handler's verdict on one message it can never process: parked with `reason`, the rest commit."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unparsable(Rejected):
    """Not a message of this queue (not JSON, not a valid event): parked as it came, before any batch."""


@dataclass(frozen=True, slots=True)
class Untrusted(Rejected):
    """Not from the publisher it claims, or not of this queue's types (`itsm_shared.trust`): parked unhandled."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The handler raised for this message alone: parked if permanent, else returned until the delivery limit."""

    error: BaseException


APPLIED = Applied()
DUPLICATE = Duplicate()


class InvalidMessage(Exception):
    """Raised by a consumer's `parse`: the message is parked with this reason."""


class RetryBatch(Exception):
    """Raised by a handler that raced another writer (a row it read as absent appeared meanwhile): the whole
    batch runs again, like a transient failure, and then reads what is there."""


def cloud_events(model: type[E]) -> Callable[[bytes], E]:
    """The `parse` of a queue of CloudEvents: `model`, or parked as `not a valid event: ...` (as `inbox.subscribe`)."""

    def parse(body: bytes) -> E:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidMessage(f"not a valid event: {_summary(exc)}") from exc

    return parse


def permanent_reason(error: BaseException) -> str | None:
    """The default: a `PermanentError` is parked at once, with the reason `inbox.subscribe` gives it."""
    return f"{type(error).__name__}: {error}" if isinstance(error, PermanentError) else None


def envelope(item: Any) -> tuple[str, str]:
    """The default: a parsed item has the `source` and `type` of its CloudEvent."""
    return item.source, item.type


def _retry_batch(error: BaseException) -> bool:
    return isinstance(error, RetryBatch) or is_transient(error)


Handler = Callable[[AsyncSession, Sequence[T]], Awaitable[Sequence[object] | None]]
Observe = Callable[[object, str], None]  # (outcome, "acked" | "parked" | "returned")


# ---------------------------------------------------------------- the consumer


class BatchConsumer(Generic[T]):
    """One queue consumed in batches; see the module's text. `queue` is the name without the settings' prefix,
    and the inbox's consumer name (as `inbox.subscribe`'s); `publisher` the one service whose events it takes (None:
    any, each for its own types), `envelope` an item's (source, type)."""

    def __init__(
        self,
        *,
        settings: ServiceSettings,
        broker: RabbitBroker,
        sessions: async_sessionmaker[AsyncSession],
        queue: str,
        routing_key: str,
        parse: Callable[[bytes], T],
        handle: Handler[T],
        publisher: str | None = None,
        envelope: Callable[[T], tuple[str, str]] = envelope,
        event_id: Callable[[T], uuid.UUID] | None = None,
        max_batch: int = 100,
        max_wait: float = BATCH_WAIT,
        prefetch: int | None = None,
        retry_for: float | None = TRANSIENT_RETRY_SECONDS,
        retry_max_seconds: float = 5.0,
        permanent: Callable[[BaseException], str | None] = permanent_reason,
        observe: Observe | None = None,
        description: str | None = None,
        ready: asyncio.Event | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("a batch holds at least one message")
        self.prefetch = prefetch if prefetch is not None else 4 * max_batch
        if self.prefetch < max_batch:
            raise ValueError("the prefetch must hold at least one batch: acknowledgements wait for the commit")
        self.settings = settings
        self.broker = broker
        self.sessions = sessions
        self.consumer = queue
        self.queue = f"{settings.queue_prefix}{queue}"
        self.routing_key = routing_key
        self.parse = parse
        self.handle = handle
        self.publisher = publisher
        self.envelope = envelope
        self.event_id = event_id
        self.retry_for = retry_for
        self.retry_max_seconds = retry_max_seconds
        self.permanent = permanent
        self.observe = observe
        self.description = description or handle.__doc__
        self.ready = ready
        self.acks = Acker()
        self._settled = {label: MESSAGES.labels(self.queue, label) for label in SETTLED}
        self._batch_size = BATCH_SIZE.labels(self.queue)
        self.writer: BatchWriter[T] = BatchWriter(self.store, self.settle, max_batch=max_batch, max_wait=max_wait)

    def declare(self) -> str:
        """The queue on the service's broker, without a handler: declared and bound when the broker starts, and
        described in /asyncapi.json. Returns its name (for its dead-letter queue)."""
        self.broker.subscriber(
            event_queue(self.settings, self.queue, self.routing_key),
            events_exchange(self.settings),
            title=self.queue,
            description=self.description,
        )
        return self.queue

    # ------------------------------------------------ consuming

    async def run(self) -> None:
        if self.ready is not None:
            await self.ready.wait()  # the broker is connected (parking publishes through it), the topology is there
        connection = await self._connect()
        writer = asyncio.create_task(self.writer.run(), name=f"batch-writer {self.queue}")
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self.prefetch)
            shape = event_queue(self.settings, self.queue, self.routing_key)
            queue = await channel.declare_queue(self.queue, durable=True, arguments=dict(shape.arguments or {}))
            await queue.bind(self.settings.exchange, routing_key=self.routing_key)
            await queue.consume(self._on_message)
            log.info("batch consumer consuming", extra={"queue": self.queue, "prefetch": self.prefetch})
            await writer
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            with contextlib.suppress(Exception):
                await connection.close()  # whatever is unacknowledged goes back to the queue

    async def _connect(self) -> AbstractRobustConnection:
        # Waits for a node that answers (each of a cluster's in turn), and moves to another when it is lost.
        return await connect_robust(self.settings)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.acks.delivered(message)
        try:
            item = self.parse(message.body)
        except InvalidMessage as exc:
            await self.settle([(message, Unparsable(str(exc)))])
            return
        source, type_ = self.envelope(item)
        untrusted = refusal(
            self.settings,
            source=source,
            type=type_,
            delivery=Delivery.of(message),
            bindings=(self.routing_key,),
            publisher=self.publisher,
        )
        if untrusted is not None:
            await self.settle([(message, Untrusted(f"untrusted: {untrusted}"))])
            return
        self.writer.add(item, message)

    # ------------------------------------------------ storing: one transaction per batch

    async def store(self, items: Sequence[T]) -> list[object]:
        """One outcome per item, committed; tried again in place while the failure is transient."""
        self._batch_size.observe(len(items))
        deadline = None if self.retry_for is None else time.monotonic() + self.retry_for
        delay = 0.1
        while True:
            try:
                return await self._attempt(items)
            except Exception as exc:
                if not _retry_batch(exc):
                    # Not even the isolation could commit: every message back to the queue, towards its limit.
                    log.exception("batch failed as a whole", extra={"queue": self.queue, "size": len(items)})
                    return [Failed(exc)] * len(items)
                if deadline is not None and time.monotonic() >= deadline:
                    return [Failed(exc)] * len(items)
                RETRIES.labels(self.queue).inc()
                log.warning(
                    "batch not committed, retrying in place",
                    extra={"queue": self.queue, "error": f"{type(exc).__name__}: {str(exc)[:300]}", "delay": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)

    async def _attempt(self, items: Sequence[T]) -> list[object]:
        try:
            async with transaction(self.sessions) as session:
                return await self._apply(session, items)
        except Exception as exc:
            if _retry_batch(exc):
                raise
            if len(items) == 1:
                return [Failed(exc)]
            log.warning(
                "batch failed; isolating the failing messages",
                extra={"queue": self.queue, "error": f"{type(exc).__name__}: {str(exc)[:300]}", "size": len(items)},
            )
        ISOLATIONS.labels(self.queue).inc()
        async with transaction(self.sessions) as session:
            return await self._isolate(session, items)

    async def _isolate(self, session: AsyncSession, items: Sequence[T]) -> list[object]:
        """The batch in halves, each in a savepoint, in order; a half that fails is halved again."""
        middle = len(items) // 2
        outcomes: list[object] = []
        for part in (items[:middle], items[middle:]):
            try:
                async with session.begin_nested():
                    outcomes += await self._apply(session, part)
            except Exception as exc:
                if _retry_batch(exc):
                    raise
                session.expire_all()  # what the rolled-back half changed is read again by the next
                outcomes += [Failed(exc)] if len(part) == 1 else await self._isolate(session, part)
        return outcomes

    async def _apply(self, session: AsyncSession, items: Sequence[T]) -> list[object]:
        outcomes: list[object] = [DUPLICATE] * len(items)
        if self.event_id is None:
            todo = list(range(len(items)))
        else:
            ids = [self.event_id(item) for item in items]
            fresh = await claim_all(session, self.consumer, ids)
            todo = []
            for n, event_id in enumerate(ids):
                if event_id in fresh:
                    fresh.discard(event_id)  # the same event twice in one batch: the second is a duplicate
                    todo.append(n)
        results = await self.handle(session, [items[n] for n in todo]) if todo else []
        if results is None:
            results = [APPLIED] * len(todo)
        if len(results) != len(todo):
            raise ValueError(f"the handler returned {len(results)} outcomes for {len(todo)} messages")
        for n, result in zip(todo, results, strict=True):
            outcomes[n] = result
        if self.event_id is not None and (refused := [n for n in todo if isinstance(outcomes[n], Rejected)]):
            # Parked, not consumed: a replay from the dead-letter queue must find it unseen.
            await session.execute(
                text("DELETE FROM inbox WHERE consumer = :c AND event_id = ANY(CAST(:ids AS uuid[]))"),
                {"c": self.consumer, "ids": [self.event_id(items[n]) for n in refused]},
            )
        return outcomes

    # ------------------------------------------------ settling: after the commit

    async def settle(self, results: list[tuple[AbstractIncomingMessage, object]]) -> None:
        for message, outcome in results:
            if isinstance(outcome, Failed):
                reason = self.permanent(outcome.error)
                if reason is None and _deliveries(message) >= self.settings.consumer_delivery_limit:
                    reason = f"{type(outcome.error).__name__}: {outcome.error}"
                if reason is None:
                    log.error(
                        "message failed; returned to the queue",
                        extra={"queue": self.queue, "error": f"{type(outcome.error).__name__}: {outcome.error}"},
                    )
                    await self._return(message)
                    self._count(outcome, "returned")
                    continue
                parked = await self._park(message, reason)
            elif isinstance(outcome, Rejected):
                parked = await self._park(message, outcome.reason)
            else:
                self.acks.settle(message)
                self._count(outcome, "acked")
                continue
            self._count(outcome, "parked" if parked else "returned")
        await self.acks.flush()

    def _count(self, outcome: object, settled: str) -> None:
        label = settled if settled != "acked" else ("duplicate" if isinstance(outcome, Duplicate) else "applied")
        self._settled[label].inc()
        if self.observe is not None:
            self.observe(outcome, settled)

    async def _park(self, message: AbstractIncomingMessage, reason: str) -> bool:
        try:
            await park(self.broker, self.settings, self.queue, message, reason)
        except Exception:
            log.exception("could not park message; returning it to the queue", extra={"queue": self.queue})
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            self.acks.settle(message, acknowledge=False)
            return False
        self.acks.settle(message)
        return True

    async def _return(self, message: AbstractIncomingMessage) -> None:
        # reject, not nack: since RabbitMQ 4.3 only basic.reject counts as a failed delivery (raises
        # x-delivery-count), as in inbox.subscribe.
        with contextlib.suppress(Exception):
            await message.reject(requeue=True)
        self.acks.settle(message, acknowledge=False)


def _deliveries(message: AbstractIncomingMessage) -> int:
    """Deliveries so far, this one included."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return (count if isinstance(count, int) else 0) + 1


# ---------------------------------------------------------------- in a service (app.Runtime)

_CONSUMERS = "itsm_shared.batches"


def consume_batches(rt: Runtime, **options: Any) -> str:
    """Register a `BatchConsumer` (the options of its constructor but the runtime's) on the service: its queue
    is declared with the broker; `run_batch_consumers` (in `ServiceSpec.background`) consumes it. Returns the
    queue's name, for `ServiceSpec.consumers` to return."""
    consumer: BatchConsumer[Any] = BatchConsumer(
        settings=rt.settings, broker=rt.broker, sessions=rt.sessions, ready=rt.broker_started, **options
    )
    rt.extras.setdefault(_CONSUMERS, []).append(consumer)
    return consumer.declare()


def batch_consumers(rt: Runtime) -> list[BatchConsumer[Any]]:
    consumers: list[BatchConsumer[Any]] = rt.extras.get(_CONSUMERS, [])
    return consumers


async def run_batch_consumers(rt: Runtime) -> None:
    """The background loop of every batch consumer the service registered."""
    await asyncio.gather(*(consumer.run() for consumer in batch_consumers(rt)))
