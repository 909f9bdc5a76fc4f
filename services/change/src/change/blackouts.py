"""Blackout windows: periods no change may be scheduled into (emergency changes excepted), written by change
managers. A window has a version and events but no number and no history table, so it is not a `Records`: its
use cases append their events to the outbox themselves (`_emit`), in the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any
from zoneinfo import ZoneInfo

from itsm_shared import outbox
from itsm_shared.auth import Principal, Role
from itsm_shared.edits import FieldEdits
from itsm_shared.errors import Forbidden, NotFound
from itsm_shared.pagination import Sort, keyset, page_of
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from change import scheduling
from change.models import BlackoutWindow
from change.schemas import BlackoutWindowCreate, BlackoutWindowRead, BlackoutWindowUpdate
from change.service import invalid, utcnow

SORTS = {"created_at": BlackoutWindow.created_at, "name": BlackoutWindow.name}


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


def _check(window: BlackoutWindow) -> None:
    if window.ends_at <= window.starts_at:
        raise invalid("end", "end must be after start")
    if window.rrule:
        try:
            scheduling.parse_rrule(window.rrule, window.starts_at, _zone(window.timezone))
        except ValueError as exc:
            raise invalid("rrule", str(exc)) from exc


async def _emit(session: AsyncSession, action: str, window: BlackoutWindow, actor: str, **kw: Any) -> None:
    await outbox.emit(
        session,
        service="change",
        type=f"blackout_window.{action}",
        subject=window.id,
        data=render(window).model_dump(mode="json"),
        actor=actor,
        sequence=window.version,
        **kw,
    )


async def get_blackout(session: AsyncSession, window_id: uuid.UUID, *, for_update: bool = False) -> BlackoutWindow:
    stmt = select(BlackoutWindow).where(BlackoutWindow.id == window_id)
    if for_update:
        stmt = stmt.with_for_update()
    window = (await session.exec(stmt)).first()
    if window is None:
        raise NotFound("no such blackout window")
    return window


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
    _check(window)
    session.add(window)
    await session.flush()
    await _emit(session, "created", window, actor.actor)
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
    _check(window)
    if edits:
        window.version += 1
        window.updated_at = utcnow()
        session.add(window)
        await _emit(session, "updated", window, actor.actor, changes=edits.fields)
    return render(window)


async def delete_blackout(session: AsyncSession, window: BlackoutWindow, actor: Principal) -> None:
    require_change_manager(actor)
    window.version += 1
    await _emit(session, "deleted", window, actor.actor)
    await session.delete(window)
