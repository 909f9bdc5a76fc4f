"""Ingest: the consumer of `audit.ingest`, a durable quorum queue bound to every event (`#`), consumed in batches
(`itsm_shared.batches`): the log has to keep up with every producer at once.

Each batch (up to `audit_batch_size` events, or what came within `audit_batch_wait_ms`) is appended to the
chain in one transaction (`audit.ingest.store_batch`) and acknowledged after the commit. The log has no inbox:
its own table, unique on the event id, is the record of what it has seen, so a redelivery after a lost
acknowledgement is a `Duplicate` and changes nothing. What is not a CloudEvent, cannot be stored, or was not
published by the broker user of the service its `source` names (or is of a type that service does not publish:
`itsm_shared.trust`) is parked in `<queue>.dlq` with its reason (`itsm_shared.inbox.park`): the source of every
record on the chain is the publisher the broker authenticated, and its `actorid` that service's word. While the
database is away the same batch is retried in place for as long as it takes, holding its messages
unacknowledged: nothing is rejected into the delivery limit, and the prefetch bounds what is held.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faststream.rabbit import RabbitBroker
from itsm_shared.app import Runtime
from itsm_shared.batches import (
    BatchConsumer,
    Handler,
    InvalidMessage,
    Unparsable,
    Untrusted,
    consume_batches,
    run_batch_consumers,
)
from itsm_shared.settings import ServiceSettings
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from audit.config import AuditSettings, get_settings
from audit.errors import InvalidEvent
from audit.ingest import Duplicate, Incoming, Stored, parse_incoming, store_batch

QUEUE = "audit.ingest"

STORED = Counter("itsm_audit_stored_total", "Events appended to the audit chain")
DUPLICATES = Counter("itsm_audit_duplicates_total", "Deliveries of events already on the chain")
PARKED = Counter("itsm_audit_parked_total", "Messages parked in the dead-letter queue", ["reason"])


def parse(body: bytes) -> Incoming:
    try:
        return parse_incoming(body)
    except InvalidEvent as exc:
        raise InvalidMessage(str(exc)) from exc


def observe(outcome: object, settled: str) -> None:
    if settled == "parked":
        reason = "invalid" if isinstance(outcome, Unparsable) else "unstorable"
        PARKED.labels("untrusted" if isinstance(outcome, Untrusted) else reason).inc()
    elif isinstance(outcome, Stored):
        STORED.inc()
    elif isinstance(outcome, Duplicate):
        DUPLICATES.inc()


def options(audit: AuditSettings, handle: Handler[Incoming] = store_batch) -> dict[str, Any]:
    """The ingest's `BatchConsumer` options; `handle` appends a batch in the consumer's transaction."""
    return {
        "queue": QUEUE,
        "routing_key": "#",
        "parse": parse,
        "handle": handle,
        # Any service's events, each only from its own broker user and of its own types (itsm_shared.trust): the
        # source and actor on the chain are what the broker vouches for, not what anyone may write in a message.
        "publisher": None,
        "max_batch": audit.audit_batch_size,
        "max_wait": audit.audit_batch_wait_ms / 1000,
        "prefetch": audit.consumer_prefetch,
        "retry_for": None,  # the log waits for its database, however long: a parked event would leave the chain
        "retry_max_seconds": audit.audit_retry_max_seconds,
        "observe": observe,
        "description": "Every event on the exchange, appended once to the hash-chained audit log",
    }


def ingest(
    *,
    settings: ServiceSettings,
    audit: AuditSettings,
    broker: RabbitBroker,
    sessions: async_sessionmaker[AsyncSession],
    handle: Handler[Incoming] = store_batch,
    ready: asyncio.Event | None = None,
) -> BatchConsumer[Incoming]:
    """An ingest consumer outside a service's runtime (a second consumer on the same queue, in the tests)."""
    return BatchConsumer(settings=settings, broker=broker, sessions=sessions, ready=ready, **options(audit, handle))


def register(rt: Runtime) -> list[str]:
    return [consume_batches(rt, **options(get_settings()))]


async def run_ingest(rt: Runtime) -> None:
    await run_batch_consumers(rt)
