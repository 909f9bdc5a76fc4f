"""Incident use cases. Every change goes through `_commit_change`: history rows, version, and events in the
same transaction as the change itself."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from itsm_shared import outbox
from itsm_shared.auth import Principal, Role
from itsm_shared.edits import FieldEdits
from itsm_shared.errors import Conflict, Forbidden, Invalid, NotFound
from itsm_shared.pagination import Sort, keyset, page_of
from itsm_shared.priority import priority as derive_priority
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from incident import lifecycle, sla
from incident.models import (
    OPEN_STATUSES,
    ClockKind,
    HoldReason,
    Incident,
    IncidentHistory,
    IncidentNote,
    SlaClock,
    SlaPolicy,
    Status,
    Visibility,
)
from incident.schemas import (
    ClockRead,
    IncidentCreate,
    IncidentRead,
    IncidentUpdate,
    NoteCreate,
    SlaPolicyWrite,
    SlaRead,
)

SERVICE = "incident"
WORKERS = frozenset({Role.AGENT, Role.ADMIN})
READERS = WORKERS | {Role.AUDITOR, Role.PROBLEM_MANAGER, Role.CHANGE_MANAGER, Role.CAB_MEMBER}
ASSIGNMENT_FIELDS = ("assignee_id", "assignment_group")


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- access


def is_requester_only(principal: Principal) -> bool:
    return not principal.has(*READERS)


def require_worker(principal: Principal) -> None:
    if not principal.has(*WORKERS):
        raise Forbidden("only agents and admins change incidents")


async def visible_incident(
    session: AsyncSession, ref: str, principal: Principal, *, for_update: bool = False
) -> Incident:
    """The incident by id or number, if this principal may see it; otherwise 404 (never 403: no leaks)."""
    stmt = select(Incident).where(col(Incident.deleted_at).is_(None))
    try:
        stmt = stmt.where(Incident.id == uuid.UUID(ref))
    except ValueError:
        stmt = stmt.where(Incident.number == ref.upper())
    if is_requester_only(principal):
        if not principal.has(Role.REQUESTER):
            raise NotFound("no such incident")
        stmt = stmt.where(Incident.caller_id == principal.id)
    if for_update:
        stmt = stmt.with_for_update()
    incident = (await session.exec(stmt)).first()
    if incident is None:
        raise NotFound("no such incident")
    return incident


# ---------------------------------------------------------------- reading


async def clocks_of(
    session: AsyncSession, ids: Sequence[uuid.UUID], *, lock: bool = False
) -> dict[uuid.UUID, dict[str, SlaClock]]:
    stmt = select(SlaClock).where(col(SlaClock.incident_id).in_(ids))
    if lock:
        # Re-read what the session may already hold: the lock is only worth the state it reads.
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    result: dict[uuid.UUID, dict[str, SlaClock]] = {i: {} for i in ids}
    for clock in (await session.exec(stmt)).all():
        result[clock.incident_id][clock.kind] = clock
    return result


def render(incident: Incident, clocks: dict[str, SlaClock], now: datetime | None = None) -> IncidentRead:
    now = now or utcnow()
    views = {kind: ClockRead(**sla.view(clock, now)) for kind, clock in clocks.items()}
    response, resolution = views.get(ClockKind.RESPONSE), views.get(ClockKind.RESOLUTION)
    return IncidentRead(
        **incident.model_dump(exclude={"search", "deleted_at", "sla_breached"}),
        sla=SlaRead(
            response_due=response.due_at if response else None,
            resolution_due=resolution.due_at if resolution else None,
            breached=any(v.breached for v in views.values()),
            response=response,
            resolution=resolution,
        ),
    )


async def read(session: AsyncSession, incident: Incident) -> IncidentRead:
    return render(incident, (await clocks_of(session, [incident.id]))[incident.id])


def _uuid_or_422(name: str, value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise Invalid(f"{name} is not a UUID", errors=[{"loc": ["query", name], "msg": "UUID expected"}]) from exc


def validated_filters(filters: dict[str, Any]) -> dict[str, Any]:
    for name in ("assignee_id", "caller_id", "problem_id"):
        filters[name] = _uuid_or_422(name, filters.get(name))
    unknown = [s for s in filters.get("status") or [] if s not in set(Status)]
    if unknown:
        raise Invalid("unknown status", errors=[{"loc": ["query", "status"], "msg": f"one of {sorted(Status)}"}])
    if filters.get("priority") is not None and filters["priority"] not in range(1, 6):
        raise Invalid("priority is 1 to 5", errors=[{"loc": ["query", "priority"], "msg": "1..5"}])
    return filters


SORTS = {
    "created_at": Incident.created_at,
    "updated_at": Incident.updated_at,
    "priority": Incident.priority,
    "number": Incident.number,
}


async def list_incidents(
    session: AsyncSession,
    principal: Principal,
    *,
    sort: Sort,
    limit: int,
    cursor: str | None,
    filters: dict[str, Any],
) -> tuple[list[IncidentRead], str | None]:
    stmt = select(Incident).where(col(Incident.deleted_at).is_(None))
    if is_requester_only(principal):
        if not principal.has(Role.REQUESTER):
            raise Forbidden("no role that reads incidents")
        stmt = stmt.where(Incident.caller_id == principal.id)
    for name in ("priority", "assignee_id", "assignment_group", "category", "caller_id", "problem_id", "sla_breached"):
        if filters.get(name) is not None:
            stmt = stmt.where(getattr(Incident, name) == filters[name])
    if filters.get("status"):
        stmt = stmt.where(col(Incident.status).in_(filters["status"]))
    if filters.get("created_after"):
        stmt = stmt.where(col(Incident.created_at) >= filters["created_after"])
    if filters.get("created_before"):
        stmt = stmt.where(col(Incident.created_at) < filters["created_before"])
    if filters.get("q"):
        stmt = stmt.where(col(Incident.search).op("@@")(func.websearch_to_tsquery("english", filters["q"])))
    rows = (await session.exec(keyset(stmt, sort, Incident.id, limit, cursor))).all()
    items, next_cursor = page_of(rows, sort, limit, value_of=lambda i: getattr(i, sort.name), id_of=lambda i: i.id)
    clocks = await clocks_of(session, [i.id for i in items])
    now = utcnow()
    return [render(i, clocks[i.id], now) for i in items], next_cursor


async def notes(session: AsyncSession, incident: Incident, principal: Principal) -> list[IncidentNote]:
    stmt = select(IncidentNote).where(IncidentNote.incident_id == incident.id)
    if is_requester_only(principal):
        stmt = stmt.where(IncidentNote.visibility == Visibility.PUBLIC)
    return list((await session.exec(stmt.order_by(col(IncidentNote.created_at), col(IncidentNote.id)))).all())


async def history(session: AsyncSession, incident: Incident) -> list[IncidentHistory]:
    stmt = select(IncidentHistory).where(IncidentHistory.incident_id == incident.id).order_by(col(IncidentHistory.id))
    return list((await session.exec(stmt)).all())


def transitions(incident: Incident, principal: Principal) -> list[dict[str, Any]]:
    if not principal.has(*WORKERS):
        return []
    return lifecycle.transitions_from(incident.status)


# ---------------------------------------------------------------- SLA policies


async def policy(session: AsyncSession, priority: int) -> SlaPolicy:
    found = await session.get(SlaPolicy, priority)
    if found is None:
        raise Invalid(f"no SLA policy for priority {priority}")
    return found


async def policies(session: AsyncSession) -> list[SlaPolicy]:
    return list((await session.exec(select(SlaPolicy).order_by(col(SlaPolicy.priority)))).all())


async def put_policy(session: AsyncSession, priority: int, data: SlaPolicyWrite) -> SlaPolicy:
    from incident.calendar import Calendar

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
    await session.commit()
    return existing


# ---------------------------------------------------------------- writing


class Change(FieldEdits):
    """What one use case does to one incident: its field changes, and the clocks it touched."""

    def __init__(self, incident: Incident, clocks: dict[str, SlaClock], actor: str, now: datetime) -> None:
        super().__init__(incident)
        self.incident, self.clocks, self.actor, self.now = incident, clocks, actor, now


async def emit(
    session: AsyncSession,
    action: str,
    incident: Incident,
    clocks: dict[str, SlaClock],
    actor: str,
    changes: dict[str, list[Any]] | None = None,
    **extra: Any,
) -> None:
    data = render(incident, clocks).model_dump(mode="json")
    data.update(extra)
    await outbox.emit(
        session,
        service=SERVICE,
        type=f"incident.{action}",
        subject=incident.id,
        data=data,
        actor=actor,
        sequence=incident.version,
        changes=changes,
    )


async def record_change(session: AsyncSession, change: Change, *, created: bool = False) -> None:
    """History, version and events for a change; the caller commits."""
    incident, fields = change.incident, change.fields
    if not fields and not created:
        return
    if not created:
        incident.version += 1
        incident.updated_at = change.now
    session.add(incident)
    for clock in change.clocks.values():
        session.add(clock)
    for field, (old, new) in fields.items():
        session.add(
            IncidentHistory(
                incident_id=incident.id, actor_id=change.actor, field=field, old=old, new=new, at=change.now
            )
        )
    await session.flush()
    if created:
        await emit(session, "created", incident, change.clocks, change.actor)
        return
    await emit(session, "updated", incident, change.clocks, change.actor, fields)
    if "status" in fields:
        await emit(session, "status_changed", incident, change.clocks, change.actor, fields)
    if any(f in fields for f in ASSIGNMENT_FIELDS):
        await emit(
            session,
            "assigned",
            incident,
            change.clocks,
            change.actor,
            {f: fields[f] for f in ASSIGNMENT_FIELDS if f in fields},
        )


async def _check_parent(session: AsyncSession, incident_id: uuid.UUID | None, parent_id: uuid.UUID) -> None:
    seen = {incident_id}
    current: uuid.UUID | None = parent_id
    while current is not None:
        if current in seen:
            raise Invalid(
                "an incident cannot be its own ancestor", errors=[{"loc": ["body", "parent_id"], "msg": "cycle"}]
            )
        seen.add(current)
        parent = await session.get(Incident, current)
        if parent is None or parent.deleted_at is not None:
            raise Invalid("no such parent incident", errors=[{"loc": ["body", "parent_id"], "msg": "unknown"}])
        current = parent.parent_id


async def open_incident(session: AsyncSession, data: IncidentCreate, actor: Principal) -> IncidentRead:
    """Create an incident with its SLA clocks; the caller's transaction seam commits."""
    if is_requester_only(actor):
        if not actor.has(Role.REQUESTER):
            raise Forbidden("not allowed to raise incidents")
        if data.caller_id not in (None, actor.id):
            raise Invalid(
                "a requester raises incidents for themselves",
                errors=[{"loc": ["body", "caller_id"], "msg": "must be your own id"}],
            )
        if data.assignee_id or data.assignment_group or data.parent_id:
            raise Forbidden("a requester cannot assign or relate incidents")
    elif not actor.has(*WORKERS):
        raise Forbidden("auditors and managers read incidents; agents raise them")
    if data.parent_id:
        await _check_parent(session, None, data.parent_id)
    now = utcnow()
    incident = Incident(
        **data.model_dump(exclude={"caller_id"}),
        caller_id=data.caller_id or actor.id,
        priority=derive_priority(data.impact, data.urgency),
        created_by=actor.id,
        created_at=now,
        updated_at=now,
    )
    session.add(incident)
    await session.flush()
    target = await policy(session, incident.priority)
    clocks: dict[str, SlaClock] = {kind: sla.start(incident.id, kind, target, now) for kind in ClockKind}
    change = Change(incident, clocks, actor.actor, now)
    await record_change(session, change, created=True)
    return render(incident, clocks, now)


async def _apply_status(session: AsyncSession, change: Change, target: str, values: dict[str, Any]) -> None:
    incident, clocks, now = change.incident, change.clocks, change.now
    current = incident.status
    lifecycle.check_transition(current, target, {**incident.model_dump(), **values})
    response, resolution = clocks.get(ClockKind.RESPONSE), clocks.get(ClockKind.RESOLUTION)
    if current == Status.NEW and response is not None:
        sla.stop(response, now)  # the first move out of new is the response
    if current == Status.ON_HOLD:
        change.set("hold_reason", None)
    if current == Status.RESOLVED and target == Status.IN_PROGRESS:
        change.set("reopen_count", incident.reopen_count + 1)
        change.set("resolved_at", None)
        change.set("resolution_code", None)
        change.set("resolution_notes", None)
    change.set("status", target)
    if target == Status.ON_HOLD:
        change.set("hold_reason", values["hold_reason"])
        if resolution is not None:
            sla.pause(resolution, now)
    elif target == Status.IN_PROGRESS:
        if resolution is not None:
            sla.resume(resolution, now)
    elif target == Status.RESOLVED:
        change.set("resolution_code", values.get("resolution_code") or incident.resolution_code)
        change.set("resolution_notes", values.get("resolution_notes") or incident.resolution_notes)
        change.set("resolved_at", now)
        for clock in clocks.values():
            sla.stop(clock, now)
    elif target in (Status.CLOSED, Status.CANCELLED):
        change.set("closed_at", now)
        for clock in clocks.values():
            sla.stop(clock, now)


async def _cascade_resolution(session: AsyncSession, parent: Incident, actor: str, now: datetime) -> None:
    """A child follows its parent to resolved, with the parent's resolution copied."""
    children = (
        await session.exec(
            select(Incident)
            .where(
                Incident.parent_id == parent.id,
                col(Incident.status).in_(OPEN_STATUSES),
                col(Incident.deleted_at).is_(None),
            )
            .with_for_update()
        )
    ).all()
    for child in children:
        await transition(
            session,
            child,
            Status.RESOLVED,
            actor,
            now=now,
            values={"resolution_code": parent.resolution_code, "resolution_notes": parent.resolution_notes},
        )


async def transition(
    session: AsyncSession,
    incident: Incident,
    target: str,
    actor: str,
    *,
    now: datetime | None = None,
    values: dict[str, Any] | None = None,
) -> Incident:
    """Move one incident to `target` (for rules and events that do it without a PATCH); no commit."""
    now = now or utcnow()
    clocks = (await clocks_of(session, [incident.id], lock=True))[incident.id]
    change = Change(incident, clocks, actor, now)
    await _apply_status(session, change, target, values or {})
    await record_change(session, change)
    if target == Status.RESOLVED:
        await _cascade_resolution(session, incident, actor, now)
    return incident


async def update_incident(
    session: AsyncSession, incident: Incident, data: IncidentUpdate, actor: Principal
) -> IncidentRead:
    require_worker(actor)
    values = data.model_dump(exclude_unset=True)
    for required in ("title", "caller_id", "impact", "urgency"):
        if required in values and values[required] is None:
            raise Invalid(f"{required} cannot be null", errors=[{"loc": ["body", required], "msg": "required"}])
    now = utcnow()
    clocks = (await clocks_of(session, [incident.id], lock=True))[incident.id]
    change = Change(incident, clocks, actor.actor, now)
    target = values.pop("status", None)
    hold_reason = values.pop("hold_reason", None)
    if target is not None and target not in set(Status):
        raise Invalid(
            f"unknown status {target!r}", errors=[{"loc": ["body", "status"], "msg": f"one of {sorted(Status)}"}]
        )
    if hold_reason is not None:
        if hold_reason not in set(HoldReason):
            raise Invalid(
                "unknown hold_reason", errors=[{"loc": ["body", "hold_reason"], "msg": f"one of {sorted(HoldReason)}"}]
            )
        if target != Status.ON_HOLD and incident.status != Status.ON_HOLD:
            raise Invalid(
                "hold_reason applies to incidents on hold",
                errors=[{"loc": ["body", "hold_reason"], "msg": "only with status on_hold"}],
            )
    if incident.status in (Status.CLOSED, Status.CANCELLED) and (values or hold_reason):
        raise Conflict(f"a {incident.status} incident is final")
    if values.get("parent_id"):
        await _check_parent(session, incident.id, values["parent_id"])
    resolving = target == Status.RESOLVED and incident.status != Status.RESOLVED
    for field in ("resolution_code", "resolution_notes"):
        if field in values and not resolving:
            change.set(field, values.pop(field))
    for field, value in values.items():
        if field not in ("resolution_code", "resolution_notes"):
            change.set(field, value)
    new_priority = derive_priority(incident.impact, incident.urgency)
    if new_priority != incident.priority:
        change.set("priority", new_priority)
        target_policy = await policy(session, new_priority)
        for clock in clocks.values():
            sla.retarget(clock, target_policy, now)
    if target is not None and target != incident.status:
        await _apply_status(session, change, target, {**values, "hold_reason": hold_reason})
    elif hold_reason is not None:
        change.set("hold_reason", hold_reason)
    if incident.status == Status.RESOLVED:
        missing = [f for f in ("resolution_code", "resolution_notes") if not getattr(incident, f)]
        if missing:
            raise Invalid(
                "a resolved incident keeps its resolution",
                errors=[{"loc": ["body", f], "msg": "required while resolved"} for f in missing],
            )
    await record_change(session, change)
    if "status" in change.fields and incident.status == Status.RESOLVED:
        await _cascade_resolution(session, incident, actor.actor, now)
    await session.commit()
    return render(incident, clocks, now)


async def note_added(session: AsyncSession, incident: Incident, note: IncidentNote, actor: str) -> None:
    """The incident.note_added event of a note, in the caller's transaction (whoever wrote it)."""
    await outbox.emit(
        session,
        service=SERVICE,
        type="incident.note_added",
        subject=incident.id,
        actor=actor,
        sequence=incident.version,
        data={
            "incident_id": str(incident.id),
            "number": incident.number,
            "note_id": str(note.id),
            "visibility": note.visibility,
            "author_id": str(note.author_id),
            "body": note.body,
            "created_at": note.created_at.isoformat() if note.created_at else None,
        },
    )


async def add_note(session: AsyncSession, incident: Incident, data: NoteCreate, actor: Principal) -> IncidentNote:
    requester = is_requester_only(actor)
    visibility = data.visibility or (Visibility.PUBLIC if requester else Visibility.INTERNAL)
    if requester and visibility != Visibility.PUBLIC:
        raise Forbidden("requesters add public comments only")
    if not requester and not actor.has(*WORKERS):
        raise Forbidden("auditors and managers read incidents; agents work them")
    if incident.status in (Status.CLOSED, Status.CANCELLED):
        raise Conflict(f"a {incident.status} incident takes no more notes")
    now = utcnow()
    note = IncidentNote(
        incident_id=incident.id, author_id=actor.id, visibility=visibility, body=data.body, created_at=now
    )
    session.add(note)
    await session.flush()
    clocks = (await clocks_of(session, [incident.id], lock=True))[incident.id]
    response = clocks.get(ClockKind.RESPONSE)
    if visibility == Visibility.PUBLIC and actor.has(*WORKERS) and actor.id != incident.caller_id and response:
        sla.stop(response, now)  # an agent's first public comment is the response
        session.add(response)
    await note_added(session, incident, note, actor.actor)
    if (
        visibility == Visibility.PUBLIC
        and actor.id == incident.caller_id
        and incident.status == Status.ON_HOLD
        and incident.hold_reason == HoldReason.AWAITING_CALLER
    ):
        await transition(session, incident, Status.IN_PROGRESS, actor.actor, now=now)
    await session.commit()
    return note


async def delete_incident(session: AsyncSession, incident: Incident, actor: Principal) -> None:
    if not actor.has(Role.ADMIN):
        raise Forbidden("only admins delete incidents")
    now = utcnow()
    clocks = (await clocks_of(session, [incident.id], lock=True))[incident.id]
    for clock in clocks.values():
        sla.stop(clock, now)
    incident.deleted_at = now
    incident.version += 1
    incident.updated_at = now
    session.add(incident)
    for clock in clocks.values():
        session.add(clock)
    session.add(
        IncidentHistory(
            incident_id=incident.id, actor_id=actor.actor, field="deleted_at", old=None, new=now.isoformat(), at=now
        )
    )
    await emit(session, "deleted", incident, clocks, actor.actor)
    await session.commit()
