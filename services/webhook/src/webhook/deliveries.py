"""The delivery log of a subscription, a retry by hand, and replays of the stored events."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta

from itsm_shared.db import driver_connection
from itsm_shared.errors import Invalid, NotFound
from itsm_shared.pagination import Sort, keyset, page_of
from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from webhook import service
from webhook.config import get_settings
from webhook.fanout import NOTIFY, like_patterns
from webhook.models import Delivery, DeliveryAttempt, DeliveryStatus, Subscription
from webhook.schemas import AttemptRead, DeliveryRead, ReplayRead

SORTS = {"created_at": Delivery.created_at}


async def _render(session: AsyncSession, deliveries: list[Delivery]) -> list[DeliveryRead]:
    attempts: dict[uuid.UUID, list[AttemptRead]] = defaultdict(list)
    if deliveries:
        stmt = (
            select(DeliveryAttempt)
            .where(col(DeliveryAttempt.delivery_id).in_([d.id for d in deliveries]))
            .order_by(col(DeliveryAttempt.id))
        )
        for attempt in (await session.exec(stmt)).all():
            attempts[attempt.delivery_id].append(AttemptRead.model_validate(attempt, from_attributes=True))
    return [
        DeliveryRead(
            id=d.id,
            subscription_id=d.subscription_id,
            event_id=d.event_id,
            event_type=d.event_type,
            replay=d.replay,
            status=d.status,
            attempts=attempts[d.id],
            next_attempt_at=d.next_attempt_at if d.status == DeliveryStatus.PENDING else None,
            created_at=d.created_at,
        )
        for d in deliveries
    ]


async def list_deliveries(
    session: AsyncSession,
    subscription: Subscription,
    *,
    sort: Sort,
    limit: int,
    cursor: str | None,
    status: list[DeliveryStatus] | None,
    event_id: uuid.UUID | None,
) -> tuple[list[DeliveryRead], str | None]:
    """Newest first by default; each delivery with every attempt, oldest attempt first."""
    stmt = select(Delivery).where(Delivery.subscription_id == subscription.id)
    if status:
        stmt = stmt.where(col(Delivery.status).in_(status))
    if event_id is not None:
        stmt = stmt.where(Delivery.event_id == event_id)
    rows = (await session.exec(keyset(stmt, sort, Delivery.id, limit, cursor))).all()
    items, next_cursor = page_of(rows, sort, limit, value_of=lambda d: getattr(d, sort.name), id_of=lambda d: d.id)
    return await _render(session, items), next_cursor


async def retry_delivery(session: AsyncSession, subscription: Subscription, delivery_id: uuid.UUID) -> DeliveryRead:
    """Due again now, whatever its state: one more attempt after the schedule ran out, or a success sent again."""
    service.ensure_active(subscription)
    stmt = select(Delivery).where(Delivery.id == delivery_id, Delivery.subscription_id == subscription.id)
    delivery = (await session.exec(stmt.with_for_update())).first()
    if delivery is None:
        raise NotFound("no such delivery")
    delivery.status = DeliveryStatus.PENDING
    delivery.next_attempt_at = service.utcnow()
    session.add(delivery)
    await session.flush()
    await session.execute(text(NOTIFY))
    return (await _render(session, [delivery]))[0]


REPLAY = """
WITH added AS (
    INSERT INTO delivery (id, subscription_id, event_id, event_type, replay)
    SELECT gen_random_uuid(), $1, e.id, e.type, true
    FROM stored_event e
    WHERE e.received_at >= $2 AND e.type LIKE ANY($3::text[])
      AND ($4::text[] IS NULL OR e.subject = ANY($4::text[]))
    ORDER BY e.received_at
    RETURNING 1
)
SELECT count(*) FROM added
"""


async def replay(session: AsyncSession, subscription: Subscription, since: datetime) -> ReplayRead:
    """Every stored event since `since` that the subscription matches, sent again (new deliveries, in the order
    they were received, each with its event id as webhook-id)."""
    service.ensure_active(subscription)
    retention = timedelta(days=get_settings().webhook_retention_days)
    oldest = service.utcnow() - retention
    if since < oldest:
        raise Invalid(
            f"events are kept {get_settings().webhook_retention_days:g} days: since must be after "
            f"{oldest.isoformat(timespec='seconds')}",
            errors=[{"loc": ["body", "since"], "msg": "before the retention window"}],
        )
    connection = await driver_connection(session)
    scheduled = await connection.fetchval(
        REPLAY, subscription.id, since, like_patterns(subscription.event_types), subscription.subjects
    )
    if scheduled:
        await connection.execute(NOTIFY)
    return ReplayRead(subscription_id=subscription.id, since=since, scheduled=scheduled)
