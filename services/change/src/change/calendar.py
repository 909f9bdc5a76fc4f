"""The change calendar, the conflicts of one RFC's planned window and the next free slot for it: the read side of
scheduling (the queries themselves are in `scheduling`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from itsm_shared.errors import Invalid
from sqlalchemy import Text, cast
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from change import scheduling, service
from change.config import get_settings
from change.models import BlackoutWindow, ChangeRequest, ChangeType, Status
from change.schemas import (
    CalendarBlackout,
    CalendarChange,
    CalendarRead,
    ConflictRead,
    ConflictsRead,
    NextSlotRead,
)
from change.service import invalid, utcnow

# Without a range the calendar shows from 30 days ago to 180 days ahead.
DEFAULT_PAST = timedelta(days=30)
DEFAULT_SPAN = timedelta(days=210)
SHORTEST_SLOT, LONGEST_SLOT = timedelta(minutes=1), timedelta(days=31)


async def read_calendar(
    session: AsyncSession, *, start: datetime | None, end: datetime | None, configuration_item: str | None
) -> CalendarRead:
    """Changes with a planned window in `[start, end)` (cancelled ones left out) and the blackout occurrences
    there, within the range and the number of changes (and of blackout occurrences) the settings allow."""
    settings = get_settings()
    start = start or utcnow() - DEFAULT_PAST
    end = end or start + DEFAULT_SPAN
    if end <= start:
        raise Invalid("end must be after start", errors=[{"loc": ["query", "end"], "msg": "after start"}])
    longest = settings.change_calendar_max_days
    if end - start > timedelta(days=longest):
        raise Invalid(
            "range too long", errors=[{"loc": ["query", "end"], "msg": f"at most {longest:g} days after start"}]
        )
    max_items = settings.change_calendar_max_items
    stmt = (
        select(ChangeRequest)
        .where(col(ChangeRequest.planned_window).op("&&")(scheduling._range(start, end)))
        .where(ChangeRequest.status != Status.CANCELLED)
        .order_by(col(ChangeRequest.planned_start), col(ChangeRequest.id))
        .limit(max_items + 1)
    )
    if configuration_item:
        stmt = stmt.where(col(ChangeRequest.configuration_items).op("@>")(cast([configuration_item], ARRAY(Text))))
    rows = (await session.exec(stmt)).all()
    if len(rows) > max_items:
        raise invalid("end", f"more than {max_items} changes in this range: ask for a shorter one", "query")
    if configuration_item:
        windows = await scheduling.blackouts_for(session, [configuration_item])
    else:
        windows = list((await session.exec(select(BlackoutWindow))).all())
    found = await scheduling.expand(windows, start, end)
    if len(found) > max_items:
        raise invalid(
            "end", f"more than {max_items} blackout occurrences in this range: ask for a shorter one", "query"
        )
    blackouts = [
        CalendarBlackout(
            id=w.id,
            name=w.name,
            start=o.start,
            end=o.end,
            timezone=w.timezone,
            recurring=bool(w.rrule),
            configuration_items=list(w.configuration_items),
        )
        for w, o in found
    ]
    blackouts.sort(key=lambda b: (b.start, str(b.id)))
    return CalendarRead(
        start=start,
        end=end,
        changes=[CalendarChange.model_validate(c, from_attributes=True) for c in rows],
        blackout_windows=blackouts,
    )


async def change_conflicts(session: AsyncSession, change: ChangeRequest) -> ConflictsRead:
    """Every conflict of the planned window now: overlapping scheduled changes on a shared configuration item
    and blackout occurrences (non-blocking for emergency changes)."""
    found = await service.conflicts_of(session, change)
    return ConflictsRead(
        change_id=change.id,
        planned_start=change.planned_start,
        planned_end=change.planned_end,
        configuration_items=change.configuration_items,
        conflicts=[ConflictRead.model_validate(c.as_dict()) for c in found],
    )


async def next_slot(
    session: AsyncSession, change: ChangeRequest, *, duration: timedelta | None, after: datetime | None
) -> NextSlotRead:
    """The first window of `duration` (default: the planned window's length) starting at or after `after`
    (default: the next minute) that is free of conflicts and blackouts, within the search horizon."""
    if duration is None:
        if not (change.planned_start and change.planned_end):
            raise invalid("duration", "give a duration, or set the change's planned window", "query")
        duration = change.planned_end - change.planned_start
    if not SHORTEST_SLOT <= duration <= LONGEST_SLOT:
        raise invalid("duration", "between one minute and 31 days", "query")
    if after is None:
        after = utcnow().replace(second=0, microsecond=0) + timedelta(minutes=1)
    elif after.tzinfo is None:
        raise invalid("after", "a time with an offset (RFC 3339)", "query")
    until = after + timedelta(days=get_settings().change_next_slot_horizon_days)
    start = await scheduling.next_slot(
        session,
        exclude=change.id,
        cis=change.configuration_items,
        duration=duration,
        after=after,
        until=until,
        blackouts_block=change.type != ChangeType.EMERGENCY,
    )
    return NextSlotRead(
        change_id=change.id,
        duration_seconds=duration.total_seconds(),
        after=after,
        searched_until=until,
        start=start,
        end=start + duration if start else None,
    )
