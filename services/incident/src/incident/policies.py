"""SLA policies: the response and resolution targets and the calendar of each priority."""

from __future__ import annotations

import time
from collections.abc import Sequence

from itsm_shared.errors import Invalid, NotFound
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from incident.calendar import Calendar
from incident.models import SlaPolicy
from incident.queries import utcnow
from incident.schemas import SlaPolicyWrite

# Every create reads its priority's policy: a process keeps each for a few seconds. A change through this
# process applies at once; other replicas take it within CACHE_SECONDS.
CACHE_SECONDS = 5.0
_cache: dict[int, tuple[float, SlaPolicy]] = {}


async def policy(session: AsyncSession, priority: int) -> SlaPolicy:
    """The policy of a priority (read-only: a cached object may be shared by requests)."""
    hit = _cache.get(priority)
    if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
        return hit[1]
    found = await session.get(SlaPolicy, priority)
    if found is None:
        raise Invalid(f"no SLA policy for priority {priority}")
    # A copy outside any session: a rollback of the session that read it must not expire what others use.
    kept = SlaPolicy(**found.model_dump())
    _cache[priority] = (time.monotonic(), kept)
    return kept


async def policies(session: AsyncSession) -> Sequence[SlaPolicy]:
    return (await session.exec(select(SlaPolicy).order_by(col(SlaPolicy.priority)))).all()


async def put_policy(session: AsyncSession, priority: int, data: SlaPolicyWrite) -> SlaPolicy:
    if priority not in range(1, 6):
        raise NotFound("priorities are 1 to 5")
    try:
        calendar = Calendar.from_dict(data.calendar.model_dump()).to_dict()
    except ValueError as exc:
        raise Invalid(str(exc), errors=[{"loc": ["body", "calendar"], "msg": str(exc)}]) from exc
    if data.response_minutes > data.resolution_minutes:
        raise Invalid(
            "the response target cannot exceed the resolution target",
            errors=[{"loc": ["body", "response_minutes"], "msg": "must be <= resolution_minutes"}],
        )
    existing = await session.get(SlaPolicy, priority, with_for_update=True)
    if existing is None:
        existing = SlaPolicy(
            priority=priority,
            name=data.name,
            response_minutes=data.response_minutes,
            resolution_minutes=data.resolution_minutes,
            calendar=calendar,
        )
    else:
        existing.name, existing.calendar = data.name, calendar
        existing.response_minutes, existing.resolution_minutes = data.response_minutes, data.resolution_minutes
        existing.version += 1
        existing.updated_at = utcnow()
    session.add(existing)
    await session.flush()
    _cache.pop(priority, None)
    return existing
