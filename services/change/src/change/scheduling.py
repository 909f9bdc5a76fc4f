"""Scheduling: conflicts between changes, blackout windows (one-off or RRULE-recurring in a time zone), and the
next free slot.

Two changes conflict when both hold their planned window (scheduled or implement), share a configuration
item, and their windows overlap as half-open ranges `[start, end)`: windows that only touch do not conflict.
The check is one query over a partial GiST index on the window range and a GIN index on the items; blackout
windows are few and expanded here (`recurrence`: bounded by the asked range, in a worker thread), in their own
time zone, so their wall-clock times hold across DST."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import DateTime, Text, cast, func, literal, or_, text
from sqlalchemy import select as select_columns
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from change import recurrence
from change.models import OCCUPYING_SQL, BlackoutWindow, ChangeRequest

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- time zones and recurrence (pure)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def wall_clock(value: datetime, tz: ZoneInfo) -> datetime:
    """A naive wall-clock time in `tz`: offset-bearing values are converted, naive ones taken as they are."""
    if value.tzinfo is not None:
        return value.astimezone(tz).replace(tzinfo=None)
    return value


def to_utc(wall: datetime, tz: ZoneInfo, *, latest: bool = False) -> datetime:
    """A wall-clock time in `tz` as UTC. A time that a DST change skips or repeats has two readings; a
    blackout takes the one that makes it cover the most: the earlier for its start, the later (`latest`) for
    its end. (02:30 on a spring-forward night starts at 01:30 winter time; an end at 02:30 on a fall-back night
    is the second 02:30.)"""
    readings = (wall.replace(tzinfo=tz, fold=0).astimezone(UTC), wall.replace(tzinfo=tz, fold=1).astimezone(UTC))
    return max(readings) if latest else min(readings)


@dataclass(frozen=True)
class Occurrence:
    start: datetime  # UTC
    end: datetime  # UTC


class Recurring(Protocol):
    """What expanding a blackout window reads: a `BlackoutWindow` row or its `Blackout` snapshot."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def timezone(self) -> str: ...
    @property
    def starts_at(self) -> datetime: ...
    @property
    def ends_at(self) -> datetime: ...
    @property
    def rrule(self) -> str | None: ...


@dataclass(frozen=True)
class Blackout:
    """A blackout window's columns, read on the event loop so that its expansion can run in a thread."""

    id: uuid.UUID
    name: str
    timezone: str
    starts_at: datetime
    ends_at: datetime
    rrule: str | None
    configuration_items: tuple[str, ...]

    @classmethod
    def of(cls, window: BlackoutWindow) -> Blackout:
        return cls(
            id=window.id,
            name=window.name,
            timezone=window.timezone,
            starts_at=window.starts_at,
            ends_at=window.ends_at,
            rrule=window.rrule,
            configuration_items=tuple(window.configuration_items),
        )


def recurrence_of(window: Recurring) -> recurrence.Rule:
    """The window's rule, compiled (cached); RecurrenceError (a ValueError) when it breaks the limits."""
    assert window.rrule
    return recurrence.compile_rule(window.rrule, window.starts_at, window.ends_at, zone(window.timezone))


def occurrences(
    window: Recurring, lo: datetime, hi: datetime, limit: int = recurrence.MAX_OCCURRENCES
) -> list[Occurrence]:
    """The window's occurrences overlapping `[lo, hi)`, in UTC, at most `limit`. Each occurrence keeps the
    wall-clock start and end of the window in its time zone, so its length in real time changes by the DST
    shift it spans. The work is bounded by the range, never by the rule's age (`recurrence.expand`). A stored
    rule that breaks today's limits (written before them, or straight into the database) is not expanded: the
    window counts as its first occurrence only, and the service says so in its log."""
    tz = zone(window.timezone)
    length = window.ends_at - window.starts_at
    starts: list[datetime] = [window.starts_at]
    if window.rrule:
        try:
            rule = recurrence_of(window)
        except ValueError as exc:
            _not_expanded(window.id, window.rrule, str(exc))
        else:
            # A day of margin either side covers any UTC offset; filtered exactly below.
            margin = timedelta(days=1)
            lo_wall = lo.astimezone(tz).replace(tzinfo=None) - length - margin
            hi_wall = hi.astimezone(tz).replace(tzinfo=None) + margin
            starts, cut = recurrence.expand(rule, lo_wall, hi_wall, limit)
            if cut:
                _cut(window.id, limit)
    found = []
    for wall_start in starts:
        start, end = to_utc(wall_start, tz), to_utc(wall_start + length, tz, latest=True)
        if start < hi and end > lo:
            found.append(Occurrence(start, end))
    return found


@lru_cache(maxsize=1024)
def _not_expanded(window_id: uuid.UUID, rule: str, reason: str) -> None:
    """Once per process and rule: a stored rule the service does not expand."""
    log.warning(
        "blackout window %s: its stored RRULE %r breaks the limits (%s); only its first occurrence applies: "
        "correct or delete the window",
        window_id,
        rule[:200],
        reason,
    )


@lru_cache(maxsize=1024)
def _cut(window_id: uuid.UUID, limit: int) -> None:
    log.warning(
        "blackout window %s: more than %d occurrences in one range; the first %d apply", window_id, limit, limit
    )


async def expand(
    windows: Sequence[BlackoutWindow], lo: datetime, hi: datetime, limit: int = recurrence.MAX_OCCURRENCES
) -> list[tuple[Blackout, Occurrence]]:
    """Every occurrence of `windows` in `[lo, hi)`, each window's at most `limit`; recurring windows are expanded
    in a worker thread, off the event loop."""
    snapshots = [Blackout.of(w) for w in windows]

    def work() -> list[tuple[Blackout, Occurrence]]:
        return [(w, o) for w in snapshots for o in occurrences(w, lo, hi, limit)]

    if any(w.rrule for w in snapshots):
        return await asyncio.to_thread(work)
    return work()


def first_occurrence(window: Recurring) -> Occurrence:
    tz = zone(window.timezone)
    return Occurrence(to_utc(window.starts_at, tz), to_utc(window.ends_at, tz, latest=True))


# ---------------------------------------------------------------- conflicts


@dataclass(frozen=True)
class Conflict:
    kind: str  # "change" or "blackout_window"
    id: uuid.UUID
    start: datetime
    end: datetime
    configuration_items: list[str]
    blocking: bool
    number: str | None = None
    title: str | None = None
    status: str | None = None
    name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "change":
            head: dict[str, Any] = {
                "kind": "change",
                "change_id": str(self.id),
                "number": self.number,
                "title": self.title,
                "status": self.status,
            }
        else:
            head = {"kind": "blackout_window", "blackout_window_id": str(self.id), "name": self.name}
        return {
            **head,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "configuration_items": self.configuration_items,
            "blocking": self.blocking,
        }


def _range(start: datetime, end: datetime) -> Any:
    return func.tstzrange(literal(start, DateTime(timezone=True)), literal(end, DateTime(timezone=True)), "[)")


def _items(cis: Sequence[str]) -> Any:
    return cast(list(cis), ARRAY(Text))


async def lock_items(session: AsyncSession, cis: Sequence[str]) -> None:
    """Serialise scheduling per configuration item until commit, so two changes cannot both pass the check
    for the same item at once. One statement; the keys are sorted and unnest keeps their order, so two
    schedulers never wait on each other in a cycle."""
    if not cis:
        return
    keys = [f"change.ci:{ci}" for ci in sorted(set(cis))]
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(CAST(:keys AS text[])) AS k"),
        {"keys": keys},
    )


def overlap_statement(*, exclude: uuid.UUID | None, start: datetime, end: datetime, cis: Sequence[str]) -> Any:
    """The changes holding a window that overlaps `[start, end)` on one of `cis`: a bitmap of the partial GiST
    index on the window (only scheduled and implementing changes are in it) and the GIN index on the items."""
    stmt = (
        select_columns(
            col(ChangeRequest.id),
            col(ChangeRequest.number),
            col(ChangeRequest.title),
            col(ChangeRequest.status),
            col(ChangeRequest.planned_start),
            col(ChangeRequest.planned_end),
            col(ChangeRequest.configuration_items),
        )
        .where(text(OCCUPYING_SQL))
        .where(col(ChangeRequest.planned_window).op("&&")(_range(start, end)))
        .where(col(ChangeRequest.configuration_items).op("&&")(_items(cis)))
        .order_by(col(ChangeRequest.planned_start), col(ChangeRequest.id))
    )
    if exclude is not None:
        stmt = stmt.where(col(ChangeRequest.id) != exclude)
    return stmt


async def overlapping_changes(
    session: AsyncSession, *, exclude: uuid.UUID | None, start: datetime, end: datetime, cis: Sequence[str]
) -> list[Conflict]:
    if not cis:
        return []
    wanted = set(cis)
    rows = (await session.execute(overlap_statement(exclude=exclude, start=start, end=end, cis=cis))).all()
    return [
        Conflict(
            kind="change",
            id=row[0],
            number=row[1],
            title=row[2],
            status=row[3],
            start=row[4],
            end=row[5],
            configuration_items=sorted(wanted.intersection(row[6])),
            blocking=True,
        )
        for row in rows
    ]


async def blackouts_for(session: AsyncSession, cis: Sequence[str]) -> list[BlackoutWindow]:
    """The blackout windows that apply to a change touching `cis`: the global ones and those scoped to one of
    its items."""
    scope = func.cardinality(col(BlackoutWindow.configuration_items)) == 0
    if cis:
        scope = or_(scope, col(BlackoutWindow.configuration_items).op("&&")(_items(cis)))
    return list((await session.exec(select(BlackoutWindow).where(scope))).all())


def blackout_conflicts(found: Iterable[tuple[Blackout, Occurrence]], *, blocking: bool) -> list[Conflict]:
    conflicts = [
        Conflict(
            kind="blackout_window",
            id=w.id,
            name=w.name,
            start=o.start,
            end=o.end,
            configuration_items=list(w.configuration_items),
            blocking=blocking,
        )
        for w, o in found
    ]
    return sorted(conflicts, key=lambda c: (c.start, str(c.id)))


async def conflicts(
    session: AsyncSession,
    *,
    exclude: uuid.UUID | None,
    start: datetime,
    end: datetime,
    cis: Sequence[str],
    blackouts_block: bool,
) -> list[Conflict]:
    """Every conflict of a window on `cis`: overlapping changes, then the blackout occurrences it falls in
    (listed as non-blocking when `blackouts_block` is false, as for emergency changes)."""
    found = await overlapping_changes(session, exclude=exclude, start=start, end=end, cis=cis)
    windows = await blackouts_for(session, cis)
    return found + blackout_conflicts(await expand(windows, start, end), blocking=blackouts_block)


# ---------------------------------------------------------------- next free slot


async def _busy(
    session: AsyncSession, *, exclude: uuid.UUID | None, lo: datetime, hi: datetime, cis: Sequence[str]
) -> list[tuple[datetime, datetime]]:
    if not cis:
        return []
    stmt = (
        select_columns(col(ChangeRequest.planned_start), col(ChangeRequest.planned_end))
        .where(text(OCCUPYING_SQL))
        .where(col(ChangeRequest.planned_window).op("&&")(_range(lo, hi)))
        .where(col(ChangeRequest.configuration_items).op("&&")(_items(cis)))
    )
    if exclude is not None:
        stmt = stmt.where(col(ChangeRequest.id) != exclude)
    return [(s, e) for s, e in (await session.execute(stmt)).all() if s is not None and e is not None]


async def next_slot(
    session: AsyncSession,
    *,
    exclude: uuid.UUID | None,
    cis: Sequence[str],
    duration: timedelta,
    after: datetime,
    until: datetime,
    blackouts_block: bool,
) -> datetime | None:
    """The earliest start >= `after` of a `duration`-long window free of conflicts, ending by `until`; None if
    there is none. Sweeps the busy intervals (changes and blackout occurrences) in chunks: one query per
    chunk, the cursor jumping past each interval that overlaps the candidate window."""
    windows = await blackouts_for(session, cis) if blackouts_block else []
    chunk = max(timedelta(days=7), duration * 4)
    cursor = after
    while cursor + duration <= until:
        hi = min(cursor + duration + chunk, until)
        busy = await _busy(session, exclude=exclude, lo=cursor, hi=hi, cis=cis)
        busy += [(o.start, o.end) for _, o in await expand(windows, cursor, hi)]
        busy.sort()
        found = False
        for start, end in busy:
            if start >= cursor + duration:
                found = True
                break
            cursor = max(cursor, end)
        if found or cursor + duration <= hi:
            return cursor if cursor + duration <= until else None
    return None
