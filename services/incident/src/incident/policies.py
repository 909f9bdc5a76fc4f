"""SLA policies: the response and resolution targets and the calendar of each priority. The requester policy:
what becomes of the impact and urgency a requester gives (taken, capped, or ignored)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from itsm_shared.errors import Invalid, NotFound
from itsm_shared.priority import priority as derive_priority
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from incident.calendar import Calendar
from incident.models import RequesterMode, RequesterPolicy, SlaPolicy
from incident.queries import utcnow
from incident.schemas import RequesterPolicyWrite, SlaPolicyWrite

# Every create reads its priority's policy: a process keeps each for a few seconds. A change through this
# process applies at once; other replicas take it within CACHE_SECONDS.
CACHE_SECONDS = 5.0
_cache: dict[int, tuple[float, SlaPolicy]] = {}
_requester: list[tuple[float, RequesterPolicy]] = []
# What the requester policy is while its row is missing (the migration writes it): ServiceNow-like, P3 at most.
DEFAULT_REQUESTER_POLICY = RequesterPolicy(mode=RequesterMode.CAP, highest_priority=3, version=0)


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


async def requester_policy(session: AsyncSession) -> RequesterPolicy:
    """The requester policy (read-only: a cached object may be shared by requests), cached like the SLA policies."""
    if _requester and time.monotonic() - _requester[0][0] < CACHE_SECONDS:
        return _requester[0][1]
    found = await session.get(RequesterPolicy, 1)
    kept = DEFAULT_REQUESTER_POLICY if found is None else RequesterPolicy(**found.model_dump())
    _requester[:] = [(time.monotonic(), kept)]
    return kept


async def locked_requester_policy(session: AsyncSession) -> RequesterPolicy:
    """The requester policy's row, locked for a change (written with the default when missing)."""
    found = await session.get(RequesterPolicy, 1, with_for_update=True)
    if found is None:
        found = RequesterPolicy(**DEFAULT_REQUESTER_POLICY.model_dump(exclude={"version"}))
        session.add(found)
        await session.flush()
    return found


async def put_requester_policy(
    session: AsyncSession, current: RequesterPolicy, data: RequesterPolicyWrite
) -> RequesterPolicy:
    current.mode, current.highest_priority = data.mode.value, data.highest_priority
    current.version += 1
    current.updated_at = utcnow()
    session.add(current)
    await session.flush()
    _requester.clear()
    return current


def requester_priority(policy: RequesterPolicy, impact: int, urgency: int) -> tuple[int, int]:
    """The impact and urgency an incident gets from what its requester gave, under `policy`. Capping keeps the
    priority derived from the matrix (a later change of either still derives it) and changes as little as it
    can: the least it must lower, keeping the requester's urgency (how pressing it is for them) where it can and
    lowering the impact (how far it reaches), which agents judge at triage (ServiceNow's caller rules)."""
    if policy.mode == RequesterMode.IGNORE:
        return 3, 3
    if policy.mode == RequesterMode.ACCEPT or derive_priority(impact, urgency) >= policy.highest_priority:
        return impact, urgency
    allowed = [
        (derive_priority(i, u), u - urgency, i, u)
        for i in range(impact, 4)
        for u in range(urgency, 4)
        if derive_priority(i, u) >= policy.highest_priority
    ]
    _, _, impact, urgency = min(allowed)
    return impact, urgency
