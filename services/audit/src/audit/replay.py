"""Replay: republish a stretch of the log, verbatim, to one of the services' consumer queues, so a rebuilt read
model catches up. The one place the audit service publishes events (besides parking messages it cannot store):
straight to the queue through the default exchange, with publisher confirms, from the admin's request. What it
publishes is committed already, so there is no transaction for an outbox to tie it to.

Only the consumer queues of the table of services (deploy/services.toml, given as ITSM_AUDIT_REPLAY_QUEUES by the
runner, compose and the chart) are targets: a replay cannot feed events to a queue of anyone's choosing. A replay
goes around the queue's bindings, so each consumer checks the types it takes (itsm_shared.trust)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
from aio_pika.exceptions import ChannelNotFoundEntity
from faststream.rabbit import RabbitBroker
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE
from itsm_shared.trust import connection_user
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from audit.errors import QueueMissing, QueueNotReplayable
from audit.models import AuditEvent
from audit.queries import seq_range, type_condition, walk
from audit.schemas import ReplayRequest, ReplayResult

log = logging.getLogger(__name__)


async def ensure_queue_exists(amqp_url: str, queue: str) -> None:
    """A passive declare, on a connection of its own: a refused passive declare closes its channel, and the
    broker's channels carry the service's consumer."""
    connection = await aio_pika.connect(amqp_url, timeout=10)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity as exc:
            raise QueueMissing(queue) from exc
    finally:
        await connection.close()


async def replay_events(
    sessions: async_sessionmaker[AsyncSession],
    broker: RabbitBroker,
    *,
    amqp_url: str,
    request: ReplayRequest,
    chunk: int,
    allowed: frozenset[str],
    queue_prefix: str = "",
) -> ReplayResult:
    """Republish the stored events of [since, until) (of a type or type prefix) to one of the `allowed` consumer
    queues (named without `queue_prefix`), in seq order, each with its own id as message id: a consumer that is
    idempotent on the id ignores what it has already seen. 422 before anything is published when the queue is
    not one of them (`QueueNotReplayable`) or does not exist (`QueueMissing`)."""
    if request.queue not in allowed:
        raise QueueNotReplayable(request.queue, allowed)
    queue = f"{queue_prefix}{request.queue}"
    await ensure_queue_exists(amqp_url, queue)
    replayer = connection_user(amqp_url)
    by_type = type_condition(request.type, col(AuditEvent.type)) if request.type else None
    async with sessions() as session:
        bounds = await seq_range(session, request.since, request.until)
    if bounds is None:
        return ReplayResult(queue=request.queue, published=0, first_seq=None, last_seq=None)
    published = 0
    first: int | None = None
    last: int | None = None
    async for rows in walk(sessions, bounds[0], bounds[1], chunk, by_type):
        # One channel publishes in the order calls reach it; the confirms of a chunk are awaited together.
        await asyncio.gather(*(_republish(broker, queue, row, replayer) for row in rows))
        published += len(rows)
        first = rows[0].seq if first is None else first
        last = rows[-1].seq
    log.info("replayed", extra={"queue": queue, "published": published, "first_seq": first, "last_seq": last})
    return ReplayResult(queue=request.queue, published=published, first_seq=first, last_seq=last)


async def _republish(broker: RabbitBroker, queue: str, row: Row[Any], user_id: str) -> None:
    await broker.publish(
        row.event.encode(),
        exchange="",
        routing_key=queue,
        persist=True,
        mandatory=True,
        message_id=str(row.event_id),
        correlation_id=row.correlation_id,
        content_type=CLOUDEVENTS_CONTENT_TYPE,
        message_type=row.type,
        # As the audit service's broker user, through the default exchange: consumers believe this as a replay of
        # events the log checked when it stored them (itsm_shared.trust).
        user_id=user_id,
        timeout=10,
    )
