"""Idempotent consumption: the event id enters the inbox in the same transaction as the effect.

Subscribers acknowledge by hand. A message that is not a valid CloudEvent, whose publisher the broker does not
vouch for (`itsm_shared.trust`), or whose handler fails on every allowed delivery, is parked in `<queue>.dlq` with
its reason in the `x-itsm-error` header. While the database is away the handler waits and retries in place
(holding the message) instead of burning deliveries.
The batch consumers (`itsm_shared.batches`) follow the same rules, many messages per transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from aio_pika.abc import AbstractIncomingMessage
from faststream.rabbit import RabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from itsm_shared.broker import event_queue, events_exchange
from itsm_shared.db import transaction
from itsm_shared.errors import Unavailable, database_unavailable
from itsm_shared.events import CloudEvent
from itsm_shared.logs import correlation_id
from itsm_shared.settings import ServiceSettings
from itsm_shared.trust import Delivery, connection_user, refusal

log = logging.getLogger(__name__)

E = TypeVar("E", bound=CloudEvent[Any])
TRANSIENT: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    ConnectionError,
    OSError,
    TimeoutError,
    Unavailable,
)
TRANSIENT_RETRY_SECONDS = 600.0


class PermanentError(Exception):
    """The message can never be processed (bad reference, rule violation): park it, don't retry."""


async def claim(session: AsyncSession, consumer: str, event_id: object) -> bool:
    """True the first time this consumer sees the event; the row commits with the caller's effect."""
    inserted = await session.execute(
        text("INSERT INTO inbox (consumer, event_id) VALUES (:c, :e) ON CONFLICT DO NOTHING RETURNING 1"),
        {"c": consumer, "e": event_id},
    )
    return inserted.scalar() is not None


_CLAIM_ALL = text(
    "INSERT INTO inbox (consumer, event_id) SELECT :c, e FROM unnest(CAST(:ids AS uuid[])) AS e ORDER BY e "
    "ON CONFLICT DO NOTHING RETURNING event_id"
)


async def claim_all(session: AsyncSession, consumer: str, event_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """The ids this consumer sees for the first time, claimed in one statement; the rows commit with the
    caller's effect. In id order, so two consumers claiming overlapping batches wait for each other, never
    deadlock."""
    ids = sorted(set(event_ids))
    if not ids:
        return set()
    claimed = await session.execute(_CLAIM_ALL, {"c": consumer, "ids": ids})
    return {uuid.UUID(str(event_id)) for event_id in claimed.scalars()}


async def handle_once(
    sessions: async_sessionmaker[AsyncSession],
    consumer: str,
    event: CloudEvent[Any],
    effect: Callable[[AsyncSession], Awaitable[object]],
) -> bool:
    """Run `effect` for a new event; the seam commits it with the inbox row. A duplicate does nothing."""
    async with transaction(sessions) as session:
        if not await claim(session, consumer, event.id):
            return False
        await effect(session)
        return True


def is_transient(exc: BaseException) -> bool:
    """The database (or whatever the handler waits on) is away for now: retry in place, spend no delivery."""
    return (isinstance(exc, DBAPIError) and database_unavailable(exc)) or isinstance(exc, TRANSIENT)


async def park(
    broker: RabbitBroker,
    settings: ServiceSettings,
    queue: str,
    msg: RabbitMessage | AbstractIncomingMessage,
    reason: str,
) -> None:
    """Publish the message as it came to `<queue>.dlq`, with the reason; `msg` is FastStream's or aio-pika's."""
    raw = msg if isinstance(msg, AbstractIncomingMessage) else msg.raw_message
    headers = dict(raw.headers or {})
    headers.update({"x-itsm-error": reason[:1000], "x-itsm-queue": queue})
    # Parked as the parking service's broker user; who published it, as the broker told us, goes along.
    headers["x-itsm-published-by"] = raw.user_id or ""
    headers["x-itsm-published-to"] = raw.exchange or ""
    await broker.publish(
        raw.body,
        exchange=settings.dead_letter_exchange,
        routing_key=queue,
        headers=headers,
        persist=True,
        mandatory=True,
        message_id=raw.message_id,
        correlation_id=raw.correlation_id,
        content_type=raw.content_type,
        user_id=connection_user(settings.amqp_url),
        timeout=10,
    )
    log.error("message parked", extra={"queue": queue, "reason": reason, "message_id": raw.message_id})


def subscribe(
    broker: RabbitBroker,
    settings: ServiceSettings,
    *,
    queue: str,
    routing_key: str,
    event_model: type[E],
    handler: Callable[[E], Awaitable[None]],
    publisher: str | None = None,
    description: str | None = None,
) -> str:
    """Register `handler` on a durable quorum queue bound to the events exchange, acking by hand. An event whose
    publisher the broker does not vouch for (`itsm_shared.trust`: `publisher` is the one service whose events the
    queue takes, None: any, each for its own types), or of a type the queue is not bound to, is parked unhandled."""
    queue = f"{settings.queue_prefix}{queue}"

    async def consume(msg: RabbitMessage) -> None:
        try:
            event = event_model.model_validate_json(msg.body)
        except ValidationError as exc:
            await park_and_ack(broker, settings, queue, msg, f"not a valid event: {validation_summary(exc)}")
            return
        untrusted = refusal(
            settings,
            source=event.source,
            type=event.type,
            delivery=Delivery.of(msg.raw_message),
            bindings=(routing_key,),
            publisher=publisher,
        )
        if untrusted is not None:
            await park_and_ack(broker, settings, queue, msg, f"untrusted: {untrusted}")
            return
        token = correlation_id.set(event.correlationid)
        try:
            await _run(handler, event, msg, queue, broker, settings)
        finally:
            correlation_id.reset(token)

    broker.subscriber(
        event_queue(settings, queue, routing_key),
        events_exchange(settings),
        title=queue,
        description=description or handler.__doc__,
    )(consume)
    return queue


async def _run(
    handler: Callable[[E], Awaitable[None]],
    event: E,
    msg: RabbitMessage,
    queue: str,
    broker: RabbitBroker,
    settings: ServiceSettings,
) -> None:
    deadline = time.monotonic() + TRANSIENT_RETRY_SECONDS
    delay = 0.2
    while True:
        try:
            await handler(event)
        except PermanentError as exc:
            await park_and_ack(broker, settings, queue, msg, f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:
            if is_transient(exc) and time.monotonic() < deadline:
                log.warning(
                    "transient failure, retrying in place",
                    extra={"queue": queue, "error": type(exc).__name__, "delay": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            count = (msg.raw_message.headers or {}).get("x-delivery-count", 0)
            deliveries = (count if isinstance(count, int) else 0) + 1
            if deliveries >= settings.consumer_delivery_limit:
                await park_and_ack(broker, settings, queue, msg, f"{type(exc).__name__}: {exc}")
            else:
                log.exception(
                    "handler failed; message returned to the queue",
                    extra={"queue": queue, "delivery": deliveries},
                )
                # reject, not nack: since RabbitMQ 4.3 only basic.reject counts as a failed delivery (raises
                # x-delivery-count); a nack-requeue would loop forever, below both our limit and the queue's.
                await msg.reject(requeue=True)
            return
        await msg.ack()
        return


async def park_and_ack(
    broker: RabbitBroker, settings: ServiceSettings, queue: str, msg: RabbitMessage, reason: str
) -> None:
    """Park the message, then settle it: acknowledged once parked, returned to the queue if parking failed."""
    try:
        await park(broker, settings, queue, msg, reason)
    except Exception:
        log.exception("could not park message; returning it to the queue", extra={"queue": queue})
        await msg.nack(requeue=True)
        return
    await msg.ack()


def validation_summary(exc: ValidationError) -> str:
    """The first few of a message's validation errors, for the `x-itsm-error` header."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
