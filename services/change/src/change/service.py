"""RFC use cases: raise, update and move an RFC through its type's path, list, history and notes. Every write
goes through `CHANGES.record` (version, history rows and events in the caller's transaction; the seam commits).
CAB decisions are in `approvals`, blackout windows in `blackouts`, the calendar and slots in `calendar`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from itsm_shared.auth import Principal, Role
from itsm_shared.edits import FieldEdits
from itsm_shared.errors import Conflict, Forbidden, Invalid
from itsm_shared.pagination import Sort, keyset, page_of
from itsm_shared.records import Changes, Event
from itsm_shared.schemas import HistoryRead, Transition
from sqlalchemy import Text, cast
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import Uuid
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from change import lifecycle, risk, scheduling, templates
from change.config import get_settings
from change.models import (
    CHANGES,
    Approval,
    ChangeNote,
    ChangeRequest,
    ChangeType,
    Risk,
    Status,
)
from change.schemas import ChangeCreate, ChangeRead, ChangeUpdate, NoteCreate, NoteRead, RiskDetails

READERS = frozenset({Role.ADMIN, Role.AGENT, Role.PROBLEM_MANAGER, Role.CHANGE_MANAGER, Role.CAB_MEMBER, Role.AUDITOR})
WRITERS = frozenset({Role.ADMIN, Role.AGENT, Role.PROBLEM_MANAGER, Role.CHANGE_MANAGER})
NOTE_WRITERS = WRITERS | {Role.CAB_MEMBER}
SCHEDULE_FIELDS = ("planned_start", "planned_end", "configuration_items")


def utcnow() -> datetime:
    return datetime.now(UTC)


def invalid(field: str, message: str, loc: str = "body") -> Invalid:
    return Invalid(message, errors=[{"loc": [loc, field], "msg": message}])


# ---------------------------------------------------------------- access and reading


def require_reader(principal: Principal) -> None:
    if not principal.has(*READERS):
        raise Forbidden("changes are read by agents, managers, CAB members, auditors and admins")


def require_writer(principal: Principal) -> None:
    if not principal.has(*WRITERS):
        raise Forbidden("changes are raised and worked by agents, problem and change managers, and admins")


async def visible(session: AsyncSession, ref: str, principal: Principal, *, for_update: bool = False) -> ChangeRequest:
    """The RFC by id or number (CHG0000001), for a principal who reads changes; else 403 or 404."""
    require_reader(principal)
    return await CHANGES.load(session, ref, for_update=for_update)


def render(change: ChangeRequest) -> ChangeRead:
    details = None
    if change.risk_assessment:
        result = risk.assess(change.risk_assessment)
        details = RiskDetails(score=result.score, score_risk=result.score_risk, rules=list(result.rules))
    return ChangeRead(**change.model_dump(exclude={"planned_window"}), risk_details=details)


def data(change: ChangeRequest) -> dict[str, Any]:
    """The `data` of an RFC's events."""
    return render(change).model_dump(mode="json")


SORTS = {
    "created_at": ChangeRequest.created_at,
    "updated_at": ChangeRequest.updated_at,
    "number": ChangeRequest.number,
}


async def list_changes(
    session: AsyncSession, *, sort: Sort, limit: int, cursor: str | None, filters: dict[str, Any]
) -> tuple[list[ChangeRead], str | None]:
    """`filters` come typed from the router: lists of enum values, UUIDs, strings; None or empty is no filter."""
    stmt = select(ChangeRequest)
    for name in ("status", "type", "risk", "approval"):
        if filters.get(name):
            stmt = stmt.where(col(getattr(ChangeRequest, name)).in_(filters[name]))
    for name in ("assignee_id", "requested_by"):
        if filters.get(name) is not None:
            stmt = stmt.where(getattr(ChangeRequest, name) == filters[name])
    if filters.get("assignment_group"):
        stmt = stmt.where(ChangeRequest.assignment_group == filters["assignment_group"])
    if filters.get("configuration_item"):
        stmt = stmt.where(
            col(ChangeRequest.configuration_items).op("@>")(cast([filters["configuration_item"]], ARRAY(Text)))
        )
    for name, column in (("incident_id", ChangeRequest.incident_ids), ("problem_id", ChangeRequest.problem_ids)):
        if filters.get(name) is not None:
            stmt = stmt.where(col(column).op("@>")(cast([filters[name]], ARRAY(Uuid))))
    rows = (await session.exec(keyset(stmt, sort, ChangeRequest.id, limit, cursor))).all()
    items, next_cursor = page_of(rows, sort, limit, value_of=lambda c: getattr(c, sort.name), id_of=lambda c: c.id)
    return [render(c) for c in items], next_cursor


async def history(session: AsyncSession, change: ChangeRequest) -> list[HistoryRead]:
    return await CHANGES.history(session, change)


async def notes(session: AsyncSession, change: ChangeRequest) -> Sequence[ChangeNote]:
    stmt = select(ChangeNote).where(ChangeNote.change_id == change.id)
    return (await session.exec(stmt.order_by(col(ChangeNote.created_at), col(ChangeNote.id)))).all()


def transitions(change: ChangeRequest, principal: Principal) -> list[Transition]:
    if not principal.has(*WRITERS):
        return []
    return lifecycle.machine(change.type).next_states(change.status, {"approval": change.approval})


# ---------------------------------------------------------------- the rules every write shares


def status_events(changed: Changes, *, rescheduled: bool = False) -> list[Event]:
    """The events a move (or a new window on a scheduled RFC) adds to `updated`: `status_changed` and the
    milestone it reached."""
    if "status" not in changed:
        return [Event("scheduled", changed)] if rescheduled else []
    events = [Event("status_changed", {"status": changed["status"]})]
    old, new = changed["status"]
    if new == Status.SCHEDULED:
        events.append(Event("scheduled", changed))
    elif old == Status.IMPLEMENT and new == Status.REVIEW:
        events.append(Event("implemented", changed))
    elif new == Status.CLOSED:
        events.append(Event("closed", changed))
    return events


async def conflicts_of(session: AsyncSession, change: ChangeRequest) -> list[scheduling.Conflict]:
    """The conflicts of the RFC's planned window now (none without a window); blackouts block all but emergencies."""
    if not (change.planned_start and change.planned_end):
        return []
    return await scheduling.conflicts(
        session,
        exclude=change.id,
        start=change.planned_start,
        end=change.planned_end,
        cis=change.configuration_items,
        blackouts_block=change.type != ChangeType.EMERGENCY,
    )


async def ensure_schedulable(session: AsyncSession, change: ChangeRequest) -> None:
    """409 listing every blocking conflict of the RFC's planned window. The items stay locked (advisory, per
    transaction) until the seam commits, so two RFCs racing for one item cannot both pass."""
    assert change.planned_start is not None
    assert change.planned_end is not None
    await scheduling.lock_items(session, change.configuration_items)
    found = await conflicts_of(session, change)
    blocking = [c for c in found if c.blocking]
    if blocking:
        raise Conflict(
            f"the planned window conflicts with {len(blocking)} scheduled change(s) or blackout window(s)",
            extra={"conflicts": [c.as_dict() for c in blocking]},
        )


def _set_risk(edits: FieldEdits, change: ChangeRequest) -> None:
    """computed_risk from the questionnaire; risk = the override, else the computed one, else low for a
    standard change (pre-approved as low risk), else unknown until assessed."""
    computed = risk.assess(change.risk_assessment).risk if change.risk_assessment else None
    edits.set("computed_risk", computed)
    effective = change.risk_override or computed or (Risk.LOW if change.type == ChangeType.STANDARD else None)
    edits.set("risk", effective)


def _check_window(start: datetime | None, end: datetime | None, what: str, *, bounded: bool = False) -> None:
    """End after start; a `bounded` (new or moved) planned window no longer than the settings allow."""
    if start is None or end is None:
        return
    if end <= start:
        raise invalid(f"{what}_end", f"{what}_end must be after {what}_start")
    longest = timedelta(days=get_settings().change_max_window_days)
    if bounded and end - start > longest:
        raise invalid("planned_end", f"a planned window lasts at most {longest.days} days")


# ---------------------------------------------------------------- RFCs


async def raise_change(session: AsyncSession, body: ChangeCreate, actor: Principal) -> ChangeRead:
    """Create an RFC in new."""
    require_writer(actor)
    _check_window(body.planned_start, body.planned_end, "planned", bounded=True)
    now = utcnow()
    change = ChangeRequest(
        **body.model_dump(exclude={"risk_assessment"}),
        risk_assessment=body.risk_assessment.model_dump() if body.risk_assessment else None,
        approval=Approval.NOT_REQUIRED if body.type == ChangeType.STANDARD else Approval.NOT_REQUESTED,
        requested_by=actor.id,
        created_at=now,
        updated_at=now,
    )
    edits = FieldEdits(change)
    _set_risk(edits, change)
    sent = {name for name, value in body.model_dump().items() if value not in (None, [])}
    await templates.check_standard(session, change, edits, actor, sent=sent, creating=True)
    session.add(change)
    await session.flush()  # the number, from the INSERT's RETURNING
    await CHANGES.record(
        session, change, actor=actor.actor, now=now, fields={}, events=[Event("created")], data=data, bump=False
    )
    return render(change)


async def update_change(
    session: AsyncSession, change: ChangeRequest, body: ChangeUpdate, actor: Principal
) -> ChangeRead:
    require_writer(actor)
    values = body.model_dump(exclude_unset=True)
    sent = set(values)
    if change.status in (Status.CLOSED, Status.CANCELLED):
        raise Conflict(f"a {change.status} change is final")
    for name in ("type", "title"):
        if name in values and values[name] is None:
            raise invalid(name, f"{name} cannot be null")
    target = values.pop("status", None)
    if target is not None and target not in set(Status):
        raise invalid("status", f"one of {sorted(Status)}")
    now = utcnow()
    edits = FieldEdits(change)

    if "type" in values and values["type"] != change.type:
        if change.status not in lifecycle.TYPE_EDITABLE:
            raise Conflict("the type of a change can be changed only while it is new")
        edits.set("type", values["type"])
        edits.set("approval", Approval.NOT_REQUIRED if change.type == ChangeType.STANDARD else Approval.NOT_REQUESTED)
    values.pop("type", None)
    retemplated = values.get("standard_template_id", change.standard_template_id) != change.standard_template_id
    if retemplated and change.status not in lifecycle.TYPE_EDITABLE:
        raise Conflict("the template of a standard change can be changed only while it is new")

    risk_fields = {"risk_assessment", "risk_override", "risk_override_reason"}.intersection(values)
    if risk_fields and change.status not in lifecycle.RISK_EDITABLE:
        raise Conflict("risk is settled once authorization has opened; a rejection returns the change to new")
    if "risk_override" in values or "risk_override_reason" in values:
        if not actor.has(Role.CHANGE_MANAGER):
            raise Forbidden("only a change manager may override the risk")
        if "risk_override" not in values:
            raise invalid("risk_override", "the reason goes with a risk_override")
        override, reason = values.pop("risk_override"), values.pop("risk_override_reason", None)
        if override is not None and not reason:
            raise invalid("risk_override_reason", "a risk override needs a reason")
        edits.set("risk_override", override)
        edits.set("risk_override_reason", reason if override is not None else None)
    if "risk_assessment" in values:
        edits.set("risk_assessment", values.pop("risk_assessment"))

    closing = {"close_code", "close_notes"}.intersection(values)
    if closing and target not in (Status.CLOSED, Status.CANCELLED):
        raise invalid(sorted(closing)[0], "close_code and close_notes go with a move to closed or cancelled")
    close_values = {k: values.pop(k) for k in list(closing)}

    for field, value in values.items():
        edits.set(field, value)
    _set_risk(edits, change)
    await templates.check_standard(session, change, edits, actor, sent=sent)
    _reopen_if_rescoped(edits, change)
    moved = "planned_start" in edits or "planned_end" in edits
    _check_window(change.planned_start, change.planned_end, "planned", bounded=moved)
    _check_window(change.actual_start, change.actual_end, "actual")

    if target is not None and target != change.status:
        _apply_status(edits, change, target, {**close_values, **values}, now)

    if change.status in lifecycle.HOLDING and not all(getattr(change, f) for f in SCHEDULE_FIELDS):
        raise Invalid(
            f"a change in {change.status} keeps its planned window and configuration items",
            errors=[{"loc": ["body", f], "msg": "required"} for f in SCHEDULE_FIELDS if not getattr(change, f)],
        )
    rescheduled = False
    if change.status == Status.SCHEDULED and ("status" in edits or any(f in edits for f in SCHEDULE_FIELDS)):
        await ensure_schedulable(session, change)
        rescheduled = "status" not in edits
    if edits:
        changed = dict(edits.fields)
        events = [Event("updated", changed), *status_events(changed, rescheduled=rescheduled)]
        await CHANGES.record(session, change, actor=actor.actor, now=now, fields=changed, events=events, data=data)
    return render(change)


def _reopen_if_rescoped(edits: FieldEdits, change: ChangeRequest) -> None:
    """Changing what the CAB approved (`lifecycle.APPROVED_SCOPE`) reopens approval: back to authorize, a new round,
    `approval: requested`; once implementation has started it is refused."""
    if change.approval != Approval.APPROVED:
        return
    rescoped = [f for f in lifecycle.APPROVED_SCOPE if f in edits and edits.fields[f][0] not in (None, [], "")]
    if not rescoped:
        return
    if change.status in lifecycle.SCOPE_FIXED:
        raise Conflict(
            f"{', '.join(rescoped)}: what the CAB approved is fixed once implementation has started; "
            "record what happened in actual_start, actual_end and notes"
        )
    if change.status in lifecycle.REOPENABLE:
        edits.set("status", Status.AUTHORIZE)
        edits.set("approval_round", change.approval_round + 1)
        edits.set("approval", Approval.REQUESTED)


def _apply_status(edits: FieldEdits, change: ChangeRequest, target: str, values: dict[str, Any], now: datetime) -> None:
    lifecycle.machine(change.type).check(change.status, target, {**change.model_dump(), **values})
    if target == Status.AUTHORIZE:
        edits.set("approval_round", change.approval_round + 1)
        edits.set("approval", Approval.REQUESTED)
    elif target == Status.IMPLEMENT:
        edits.set("actual_start", change.actual_start or now)
    elif target == Status.REVIEW:
        edits.set("actual_end", change.actual_end or max(now, change.actual_start or now))
    elif target == Status.CLOSED:
        edits.set("close_code", values["close_code"])
        edits.set("close_notes", values["close_notes"])
        edits.set("closed_at", now)
    elif target == Status.CANCELLED:
        if values.get("close_notes"):
            edits.set("close_notes", values["close_notes"])
        edits.set("closed_at", now)
    edits.set("status", target)


# ---------------------------------------------------------------- notes


async def add_note(session: AsyncSession, change: ChangeRequest, body: NoteCreate, actor: Principal) -> NoteRead:
    """A note is not a field of the RFC: no version, no history row; its event carries the RFC's version."""
    if not actor.has(*NOTE_WRITERS):
        raise Forbidden("auditors read changes; they do not write notes")
    now = utcnow()
    note = ChangeNote(change_id=change.id, author_id=actor.id, body=body.body, created_at=now)
    session.add(note)
    await session.flush()
    event = {
        "change_id": str(change.id),
        "number": change.number,
        "note_id": str(note.id),
        "author_id": str(note.author_id),
        "body": note.body,
        "created_at": now.isoformat(),
    }
    await CHANGES.emit(session, change, "note_added", event, actor.actor)
    return NoteRead.model_validate(note, from_attributes=True)
