"""Blackout windows: periods no change may be scheduled into (emergency changes excepted), written by change
managers. A window is versioned and published through the shared write path (`BLACKOUTS`), without history rows
and without a number."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from itsm_shared.auth import Principal, Role
from itsm_shared.edits import FieldEdits
from itsm_shared.errors import Forbidden
from itsm_shared.pagination import Sort, keyset, page_of
from itsm_shared.records import Event
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from change import scheduling
from change.models import BLACKOUTS, BlackoutWindow
from change.schemas import BlackoutWindowCreate, BlackoutWindowRead, BlackoutWindowUpdate
from change.service import invalid, utcnow

SORTS = {"created_at": BlackoutWindow.created_at, "name": BlackoutWindow.name}
# A window starts within this range around now: an old start buys nothing but a longer walk.
EARLIEST, LATEST = timedelta(days=10 * 365), timedelta(days=50 * 365)


def render(window: BlackoutWindow) -> BlackoutWindowRead:
    first = scheduling.first_occurrence(window)
    tz = scheduling.zone(window.timezone)
    return BlackoutWindowRead(
        **window.model_dump(exclude={"starts_at", "ends_at"}),
        start=first.start.astimezone(tz),
        end=first.end.astimezone(tz),
        recurring=bool(window.rrule),
    )


def require_change_manager(actor: Principal) -> None:
    if not actor.has(Role.CHANGE_MANAGER):
        raise Forbidden("blackout windows are written by change managers")


def _zone(name: str) -> ZoneInfo:
    try:
        return scheduling.zone(name)
    except ValueError as exc:
        raise invalid("timezone", str(exc)) from exc


async def _check(window: BlackoutWindow, changed: Iterable[str]) -> None:
    """The rules of a window, for what a write changed (a stored window is not refused for what it kept): end after
    start, start within `EARLIEST` to `LATEST` of now, and a rule within `recurrence`'s limits (checked in a
    worker thread: the check walks the rule's first occurrences)."""
    changed = set(changed)
    if window.ends_at <= window.starts_at:
        raise invalid("end", "end must be after start")
    tz = _zone(window.timezone)
    if changed & {"starts_at", "timezone"}:
        start, now = scheduling.to_utc(window.starts_at, tz), utcnow()
        if not now - EARLIEST <= start <= now + LATEST:
            years = f"{EARLIEST.days // 365} years ago and {LATEST.days // 365} years ahead"
            raise invalid("start", f"a blackout window starts between {years}")
    if window.rrule and changed & {"rrule", "starts_at", "ends_at", "timezone"}:
        try:
            await asyncio.to_thread(scheduling.recurrence_of, scheduling.Blackout.of(window))
        except ValueError as exc:
            raise invalid("rrule", str(exc)) from exc


def _data(window: BlackoutWindow) -> dict[str, Any]:
    return render(window).model_dump(mode="json")


async def get_blackout(session: AsyncSession, window_id: uuid.UUID, *, for_update: bool = False) -> BlackoutWindow:
    return await BLACKOUTS.load(session, window_id, for_update=for_update)


async def list_blackouts(
    session: AsyncSession, *, sort: Sort, limit: int, cursor: str | None
) -> tuple[list[BlackoutWindowRead], str | None]:
    rows = (await session.exec(keyset(select(BlackoutWindow), sort, BlackoutWindow.id, limit, cursor))).all()
    items, next_cursor = page_of(rows, sort, limit, value_of=lambda w: getattr(w, sort.name), id_of=lambda w: w.id)
    return [render(w) for w in items], next_cursor


async def create_blackout(session: AsyncSession, body: BlackoutWindowCreate, actor: Principal) -> BlackoutWindowRead:
    require_change_manager(actor)
    now = utcnow()
    tz = _zone(body.timezone)
    window = BlackoutWindow(
        name=body.name,
        description=body.description,
        timezone=body.timezone,
        starts_at=scheduling.wall_clock(body.start, tz),
        ends_at=scheduling.wall_clock(body.end, tz),
        rrule=body.rrule,
        configuration_items=body.configuration_items,
        created_by=actor.id,
        created_at=now,
        updated_at=now,
    )
    await _check(window, ("starts_at", "ends_at", "timezone", "rrule"))
    session.add(window)
    await session.flush()
    created = [Event("created")]
    await BLACKOUTS.record(
        session, window, actor=actor.actor, now=now, fields={}, events=created, data=_data, bump=False
    )
    return render(window)


async def update_blackout(
    session: AsyncSession, window: BlackoutWindow, body: BlackoutWindowUpdate, actor: Principal
) -> BlackoutWindowRead:
    require_change_manager(actor)
    values = body.model_dump(exclude_unset=True)
    for name in ("name", "timezone", "start", "end"):
        if name in values and values[name] is None:
            raise invalid(name, f"{name} cannot be null")
    edits = FieldEdits(window)
    for name in ("name", "description", "timezone", "rrule", "configuration_items"):
        if name in values:
            edits.set(name, values[name])
    # Wall-clock times in the (possibly new) time zone; a new zone alone keeps the wall-clock times.
    tz = _zone(window.timezone)
    for name, column in (("start", "starts_at"), ("end", "ends_at")):
        if values.get(name) is not None:
            edits.set(column, scheduling.wall_clock(values[name], tz))
    await _check(window, edits.fields)
    if edits:
        updated = [Event("updated", edits.fields)]
        await BLACKOUTS.record(session, window, actor=actor.actor, now=utcnow(), fields={}, events=updated, data=_data)
    return render(window)


async def delete_blackout(session: AsyncSession, window: BlackoutWindow, actor: Principal) -> None:
    require_change_manager(actor)
    deleted = [Event("deleted")]
    await BLACKOUTS.record(session, window, actor=actor.actor, now=utcnow(), fields={}, events=deleted, data=_data)
    await session.delete(window)
