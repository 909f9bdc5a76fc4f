"""Transactional outbox: events are rows written in the caller's transaction; the relay (itsm_shared.relay)
publishes them.

`append` writes the rows and a NOTIFY in one statement (PostgreSQL delivers it only after commit), which wakes the
relay; the relay also sweeps periodically as a safety net.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from sqlmodel.ext.asyncio.session import AsyncSession

from itsm_shared.db import driver_connection
from itsm_shared.events import new_event, routing_key

__all__ = ["channel_for", "routing_key"]

PUBLISHED = Counter("itsm_outbox_published_total", "Events published and confirmed by the broker")
FAILED = Counter("itsm_outbox_publish_failures_total", "Publish attempts that failed", ["reason"])
PENDING = Gauge("itsm_outbox_pending", "Outbox rows not yet published at the last sweep")

MAX_BACKOFF = timedelta(seconds=60)


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
        [json.dumps(e, allow_nan=False) for e in events],  # NaN or Infinity: a bug to see, not a row to store
        channel_for(events[0]["source"].rsplit("/", 1)[-1]),
    )


async def emit(session: AsyncSession, **event: Any) -> None:
    """`append` of a `new_event(...)` built from these fields."""
    await append(session, new_event(**event))


def backoff(attempts: int) -> timedelta:
    return min(timedelta(milliseconds=250 * 2 ** min(attempts, 10)), MAX_BACKOFF)
