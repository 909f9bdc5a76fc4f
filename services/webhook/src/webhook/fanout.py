"""Every consumed event becomes deliveries: per batch (one transaction of the batch consumer), the events are
stored as they came (their bytes are the body of each delivery, and of replays while they are kept), and one
delivery row is made per active subscription that matches, due at once. A NOTIFY, sent when the batch commits,
wakes the dispatchers of every replica."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from itsm_shared.batches import InvalidMessage
from itsm_shared.db import driver_connection
from itsm_shared.events import CloudEvent
from itsm_shared.inbox import validation_summary
from pydantic import ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

# Dispatchers LISTEN here; sent in the transaction that adds deliveries, so delivered after its commit.
CHANNEL = "itsm_webhook_deliveries"


@dataclass(frozen=True, slots=True)
class Incoming:
    id: uuid.UUID
    source: str
    type: str
    subject: str | None
    body: bytes  # as consumed: what every delivery of the event sends


def parse(body: bytes) -> Incoming:
    try:
        event = CloudEvent[Any].model_validate_json(body)
    except ValidationError as exc:
        raise InvalidMessage(f"not a valid event: {validation_summary(exc)}") from exc
    return Incoming(event.id, event.source, event.type, event.subject, body)


def event_id(item: Incoming) -> uuid.UUID:
    return item.id


def type_matches(pattern: str, event_type: str) -> bool:
    """`*` matches every type; elsewhere a `*` part matches any one part (`itsm.incident.*`)."""
    if pattern == "*":
        return True
    parts, wanted = event_type.split("."), pattern.split(".")
    return len(parts) == len(wanted) and all(w in ("*", p) for w, p in zip(wanted, parts, strict=True))


def matches(event_types: Sequence[str], subjects: Sequence[str] | None, event_type: str, subject: str | None) -> bool:
    if subjects is not None and subject not in subjects:
        return False
    return any(type_matches(pattern, event_type) for pattern in event_types)


def like_patterns(event_types: Sequence[str]) -> list[str]:
    """The same patterns for SQL `LIKE` (a type part is `[a-z_]+`: no dot, and `_` escaped)."""
    return ["%" if p == "*" else p.replace("_", "\\_").replace("*", "%") for p in event_types]


# The batch stored, and the active subscriptions read, in one statement (one round trip a batch, not two).
STORE_AND_READ_ACTIVE = """
WITH stored AS (
    INSERT INTO stored_event (id, type, subject, body)
    SELECT * FROM unnest($1::uuid[], $2::varchar[], $3::text[], $4::bytea[])
    ON CONFLICT (id) DO NOTHING
)
SELECT id, event_types, subjects FROM subscription WHERE active
"""
DELIVER = """
WITH added AS (
    INSERT INTO delivery (id, subscription_id, event_id, event_type)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::varchar[])
    ON CONFLICT (subscription_id, event_id) WHERE NOT replay DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM added
"""
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"


async def on_events(session: AsyncSession, items: Sequence[Incoming]) -> None:
    """The handler of the batch consumer: store the batch's events, fan each out to its subscriptions."""
    connection = await driver_connection(session)
    subscriptions = await connection.fetch(
        STORE_AND_READ_ACTIVE,
        [i.id for i in items],
        [i.type for i in items],
        [i.subject for i in items],
        [i.body for i in items],
    )
    pairs = [
        (s["id"], item)
        for item in items
        for s in subscriptions
        if matches(s["event_types"], s["subjects"], item.type, item.subject)
    ]
    if not pairs:
        return
    await connection.fetchval(
        DELIVER,
        [uuid.uuid4() for _ in pairs],
        [subscription for subscription, _ in pairs],
        [item.id for _, item in pairs],
        [item.type for _, item in pairs],
    )
    await connection.execute(NOTIFY)
