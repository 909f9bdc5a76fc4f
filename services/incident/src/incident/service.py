"""Incident use cases of the API: raise, update (status, assignment, priority), comment, delete. Every change
is saved by `save`: the shared write path (version, history rows, events) plus the SLA clocks it touched, in
the request's transaction (the seam commits)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from itsm_shared.auth import Principal, Role
from itsm_shared.edits import FieldEdits
from itsm_shared.errors import Conflict, Forbidden, Invalid
from itsm_shared.priority import priority as derive_priority
from itsm_shared.records import Event
from pydantic_core import to_jsonable_python
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from incident import sla
from incident.lifecycle import MACHINE
from incident.models import (
    INCIDENTS,
    OPEN_STATUSES,
    ClockKind,
    HoldReason,
    Incident,
    IncidentNote,
    SlaClock,
    Status,
    Visibility,
)
from incident.policies import policy, requester_policy, requester_priority
from incident.queries import WORKERS, clocks_of, is_requester_only, render, require_worker, shown, utcnow
from incident.schemas import IncidentCreate, IncidentRead, IncidentUpdate, NoteCreate

ASSIGNMENT_FIELDS = ("assignee_id", "assignment_group")
CLOCK_TABLE: sa.Table = SlaClock.__table__  # type: ignore[attr-defined]
# What a new incident is before the INSERT gives it its number.
UNNUMBERED = {
    "number": "",
    "resolution_code": None,
    "resolution_notes": None,
    "hold_reason": None,
    "problem_id": None,
    "reopen_count": 0,
    "resolved_at": None,
    "closed_at": None,
    "version": 1,
}


class _Created(NamedTuple):
    id: uuid.UUID
    version: int


FINAL = (Status.CLOSED, Status.CANCELLED)


class IncidentEdit(FieldEdits):
    """What one use case does to one incident: its field edits, and its SLA clocks (which it may move)."""

    def __init__(self, incident: Incident, clocks: dict[str, SlaClock], actor: str, now: datetime) -> None:
        super().__init__(incident)
        self.incident, self.clocks, self.actor, self.now = incident, clocks, actor, now


async def edit(session: AsyncSession, incident: Incident, actor: str, now: datetime) -> IncidentEdit:
    """Start an edit of `incident`, with its clocks locked."""
    return IncidentEdit(incident, (await clocks_of(session, [incident.id], lock=True))[incident.id], actor, now)


async def save(
    session: AsyncSession,
    edited: IncidentEdit,
    events: list[Event] | None = None,
    *,
    fields: dict[str, list[Any]] | None = None,
    bump: bool = True,
) -> None:
    """Record an edit: its clocks, and through the shared write path the version, history rows and events.
    Without `events`: `updated`, plus `status_changed` and `assigned` when those changed; nothing at all when no
    field changed."""
    fields = edited.fields if fields is None else fields
    if events is None:
        if not fields:
            return
        events = [Event("updated", fields)]
        if "status" in fields:
            events.append(Event("status_changed", fields))
        if assigned := {f: fields[f] for f in ASSIGNMENT_FIELDS if f in fields}:
            events.append(Event("assigned", assigned))
    for clock in edited.clocks.values():
        session.add(clock)

    def data(incident: Incident) -> dict[str, Any]:
        return render(incident, edited.clocks).model_dump(mode="json")

    await INCIDENTS.record(
        session, edited.incident, actor=edited.actor, now=edited.now, fields=fields, events=events, data=data, bump=bump
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


async def open_incident(session: AsyncSession, data: IncidentCreate, actor: Principal) -> dict[str, Any]:
    """Create an incident with its SLA clocks; returns it as shown (`queries.shown`). A requester's impact and
    urgency are taken as the requester policy says (accepted, capped, or ignored: issue #11, point 16); an agent's
    or admin's as given."""
    impact, urgency = data.impact, data.urgency
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
        impact, urgency = requester_priority(await requester_policy(session), impact, urgency)
    elif not actor.has(*WORKERS):
        raise Forbidden("auditors and managers read incidents; agents raise them")
    if data.parent_id:
        await _check_parent(session, None, data.parent_id)
    now = utcnow()
    values = {
        **data.model_dump(exclude={"caller_id"}),
        "id": uuid.uuid4(),
        "caller_id": data.caller_id or actor.id,
        "impact": impact,
        "urgency": urgency,
        "priority": derive_priority(impact, urgency),
        "status": Status.NEW.value,
        "created_by": actor.id,
        "created_at": now,
        "updated_at": now,
    }
    # The create is the hot path: one statement for the row, its clocks and its event (the number the database
    # gives is written into the event), no ORM objects, and one rendering for the response and the event.
    target = await policy(session, values["priority"])
    clocks = {kind.value: sla.start(values["id"], kind, target, now) for kind in ClockKind}
    created = shown({**values, **UNNUMBERED}, clocks, now)
    event = INCIDENTS.event(_Created(values["id"], 1), "created", to_jsonable_python(created), actor.actor)
    row = await INCIDENTS.create(
        session,
        values,
        children=[(CLOCK_TABLE, [sla.columns(clock) for clock in clocks.values()])],
        events=[event],
        generated=("number",),
        last=True,  # a create with no Idempotency-Key and no read before it is this one statement
    )
    created["number"] = row["number"]
    return created


def _apply_status(edited: IncidentEdit, target: str, values: dict[str, Any]) -> None:
    incident, clocks, now = edited.incident, edited.clocks, edited.now
    current = incident.status
    MACHINE.check(current, target, {**incident.model_dump(), **values})
    response, resolution = clocks.get(ClockKind.RESPONSE), clocks.get(ClockKind.RESOLUTION)
    if current == Status.NEW and response is not None:
        sla.stop(response, now)  # the first move out of new is the response
    if current == Status.ON_HOLD:
        edited.set("hold_reason", None)
    if current == Status.RESOLVED and target == Status.IN_PROGRESS:
        edited.set("reopen_count", incident.reopen_count + 1)
        edited.set("resolved_at", None)
        edited.set("resolution_code", None)
        edited.set("resolution_notes", None)
    edited.set("status", target)
    if target == Status.ON_HOLD:
        edited.set("hold_reason", values["hold_reason"])
        if resolution is not None:
            sla.pause(resolution, now)
    elif target == Status.IN_PROGRESS:
        if resolution is not None:
            sla.resume(resolution, now)
    elif target == Status.RESOLVED:
        edited.set("resolution_code", values.get("resolution_code") or incident.resolution_code)
        edited.set("resolution_notes", values.get("resolution_notes") or incident.resolution_notes)
        edited.set("resolved_at", now)
        for clock in clocks.values():
            sla.stop(clock, now)
    elif target in FINAL:
        edited.set("closed_at", now)
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
    """Move one incident to `target`, for rules and events that do it without a PATCH."""
    edited = await edit(session, incident, actor, now or utcnow())
    _apply_status(edited, target, values or {})
    await save(session, edited)
    if target == Status.RESOLVED:
        await _cascade_resolution(session, incident, actor, edited.now)
    return incident


def _check_update(incident: Incident, values: dict[str, Any], target: str | None, hold_reason: str | None) -> None:
    for required in ("title", "caller_id", "impact", "urgency"):
        if required in values and values[required] is None:
            raise Invalid(f"{required} cannot be null", errors=[{"loc": ["body", required], "msg": "required"}])
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
    if incident.status in FINAL and (values or hold_reason):
        raise Conflict(f"a {incident.status} incident is final")


async def update_incident(
    session: AsyncSession, incident: Incident, data: IncidentUpdate, actor: Principal
) -> IncidentRead:
    require_worker(actor)
    values = data.model_dump(exclude_unset=True)
    target = values.pop("status", None)
    hold_reason = values.pop("hold_reason", None)
    _check_update(incident, values, target, hold_reason)
    edited = await edit(session, incident, actor.actor, utcnow())
    if values.get("parent_id"):
        await _check_parent(session, incident.id, values["parent_id"])
    resolving = target == Status.RESOLVED and incident.status != Status.RESOLVED
    for field in ("resolution_code", "resolution_notes"):
        if field in values and not resolving:
            edited.set(field, values.pop(field))
    for field, value in values.items():
        if field not in ("resolution_code", "resolution_notes"):
            edited.set(field, value)
    new_priority = derive_priority(incident.impact, incident.urgency)
    if new_priority != incident.priority:
        edited.set("priority", new_priority)
        target_policy = await policy(session, new_priority)
        for clock in edited.clocks.values():
            sla.retarget(clock, target_policy, edited.now)
    if target is not None and target != incident.status:
        _apply_status(edited, target, {**values, "hold_reason": hold_reason})
    elif hold_reason is not None:
        edited.set("hold_reason", hold_reason)
    if incident.status == Status.RESOLVED:
        missing = [f for f in ("resolution_code", "resolution_notes") if not getattr(incident, f)]
        if missing:
            raise Invalid(
                "a resolved incident keeps its resolution",
                errors=[{"loc": ["body", f], "msg": "required while resolved"} for f in missing],
            )
    await save(session, edited)
    if "status" in edited and incident.status == Status.RESOLVED:
        await _cascade_resolution(session, incident, actor.actor, edited.now)
    return render(incident, edited.clocks, edited.now)


async def note_added(session: AsyncSession, incident: Incident, note: IncidentNote, actor: str) -> None:
    """The incident.note_added event of a note, in the caller's transaction (whoever wrote it)."""
    data = {
        "incident_id": str(incident.id),
        "number": incident.number,
        "note_id": str(note.id),
        "visibility": note.visibility,
        "author_id": str(note.author_id),
        "body": note.body,
        "created_at": note.created_at.isoformat() if note.created_at else None,
    }
    await INCIDENTS.emit(session, incident, "note_added", data, actor)


async def add_note(session: AsyncSession, incident: Incident, data: NoteCreate, actor: Principal) -> IncidentNote:
    requester = is_requester_only(actor)
    visibility = data.visibility or (Visibility.PUBLIC if requester else Visibility.INTERNAL)
    if requester and visibility != Visibility.PUBLIC:
        raise Forbidden("requesters add public comments only")
    if not requester and not actor.has(*WORKERS):
        raise Forbidden("auditors and managers read incidents; agents work them")
    if incident.status in FINAL:
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
    return note


async def delete_incident(session: AsyncSession, incident: Incident, actor: Principal) -> None:
    if not actor.has(Role.ADMIN):
        raise Forbidden("only admins delete incidents")
    edited = await edit(session, incident, actor.actor, utcnow())
    for clock in edited.clocks.values():
        sla.stop(clock, edited.now)
    incident.deleted_at = edited.now
    await save(session, edited, [Event("deleted")], fields={"deleted_at": [None, edited.now.isoformat()]})
