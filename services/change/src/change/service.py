"""Change use cases. Every change to an RFC goes through `_save`: history rows, version and events in the same
transaction as the change itself. Creates (RFCs, approvals, notes, blackout windows) leave the commit to the
router's Idempotency-Key seam; the other use cases commit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from itsm_shared import outbox
from itsm_shared.auth import Principal, Role
from itsm_shared.edits import FieldEdits
from itsm_shared.errors import Conflict, Forbidden, Invalid, NotFound
from itsm_shared.pagination import Sort, keyset, page_of
from sqlalchemy import Text, cast, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import Uuid
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from change import lifecycle, risk, scheduling
from change.models import (
    Approval,
    BlackoutWindow,
    ChangeApproval,
    ChangeHistory,
    ChangeNote,
    ChangeRequest,
    ChangeType,
    Decision,
    Risk,
    Status,
)
from change.schemas import (
    ApprovalCreate,
    BlackoutWindowCreate,
    BlackoutWindowRead,
    BlackoutWindowUpdate,
    CalendarBlackout,
    CalendarChange,
    CalendarRead,
    ChangeCreate,
    ChangeRead,
    ChangeUpdate,
    ConflictRead,
    ConflictsRead,
    NextSlotRead,
    NoteCreate,
    RiskDetails,
)

SERVICE = "change"
READERS = frozenset({Role.ADMIN, Role.AGENT, Role.PROBLEM_MANAGER, Role.CHANGE_MANAGER, Role.CAB_MEMBER, Role.AUDITOR})
WRITERS = frozenset({Role.ADMIN, Role.AGENT, Role.PROBLEM_MANAGER, Role.CHANGE_MANAGER})
NOTE_WRITERS = WRITERS | {Role.CAB_MEMBER}
SCHEDULE_FIELDS = ("planned_start", "planned_end", "configuration_items")
# Approvals needed per risk: one for low and moderate, two from different people for high.
QUORUM = {Risk.LOW: 1, Risk.MODERATE: 1, Risk.HIGH: 2}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _invalid(field: str, message: str, loc: str = "body") -> Invalid:
    return Invalid(message, errors=[{"loc": [loc, field], "msg": message}])


# ---------------------------------------------------------------- access


def require_reader(principal: Principal) -> None:
    if not principal.has(*READERS):
        raise Forbidden("changes are read by agents, managers, CAB members, auditors and admins")


def require_writer(principal: Principal) -> None:
    if not principal.has(*WRITERS):
        raise Forbidden("changes are raised and worked by agents, problem and change managers, and admins")


def approver_role(change: ChangeRequest) -> str:
    return Role.CHANGE_MANAGER if change.type == ChangeType.EMERGENCY else Role.CAB_MEMBER


async def get_change(session: AsyncSession, ref: str, *, for_update: bool = False) -> ChangeRequest:
    """An RFC by id or number (CHG0000001), else 404."""
    stmt = select(ChangeRequest)
    try:
        stmt = stmt.where(ChangeRequest.id == uuid.UUID(ref))
    except ValueError:
        stmt = stmt.where(ChangeRequest.number == ref.upper())
    if for_update:
        stmt = stmt.with_for_update()
    change = (await session.exec(stmt)).first()
    if change is None:
        raise NotFound("no such change")
    return change


# ---------------------------------------------------------------- reading


def render(change: ChangeRequest) -> ChangeRead:
    details = None
    if change.risk_assessment:
        result = risk.assess(change.risk_assessment)
        details = RiskDetails(score=result.score, score_risk=result.score_risk, rules=list(result.rules))
    return ChangeRead(**change.model_dump(exclude={"planned_window"}), risk_details=details)


SORTS = {
    "created_at": ChangeRequest.created_at,
    "updated_at": ChangeRequest.updated_at,
    "number": ChangeRequest.number,
}


def _uuid_or_422(name: str, value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise _invalid(name, "UUID expected", "query") from exc


def _enum_values(name: str, values: list[str], allowed: Any) -> list[str]:
    unknown = [v for v in values if v not in set(allowed)]
    if unknown:
        raise _invalid(name, f"one of {sorted(allowed)}", "query")
    return values


async def list_changes(
    session: AsyncSession, *, sort: Sort, limit: int, cursor: str | None, filters: dict[str, Any]
) -> tuple[list[ChangeRead], str | None]:
    stmt = select(ChangeRequest)
    for name, enum in (("status", Status), ("type", ChangeType), ("risk", Risk), ("approval", Approval)):
        if filters.get(name):
            stmt = stmt.where(getattr(ChangeRequest, name).in_(_enum_values(name, filters[name], enum)))
    for name in ("assignee_id", "requested_by"):
        if (value := _uuid_or_422(name, filters.get(name))) is not None:
            stmt = stmt.where(getattr(ChangeRequest, name) == value)
    if filters.get("assignment_group"):
        stmt = stmt.where(ChangeRequest.assignment_group == filters["assignment_group"])
    if filters.get("configuration_item"):
        stmt = stmt.where(
            col(ChangeRequest.configuration_items).op("@>")(cast([filters["configuration_item"]], ARRAY(Text)))
        )
    for name, column in (("incident_id", ChangeRequest.incident_ids), ("problem_id", ChangeRequest.problem_ids)):
        if (value := _uuid_or_422(name, filters.get(name))) is not None:
            stmt = stmt.where(col(column).op("@>")(cast([value], ARRAY(Uuid))))
    rows = (await session.exec(keyset(stmt, sort, ChangeRequest.id, limit, cursor))).all()
    items, next_cursor = page_of(rows, sort, limit, value_of=lambda c: getattr(c, sort.name), id_of=lambda c: c.id)
    return [render(c) for c in items], next_cursor


async def history(session: AsyncSession, change: ChangeRequest) -> list[ChangeHistory]:
    stmt = select(ChangeHistory).where(ChangeHistory.change_id == change.id).order_by(col(ChangeHistory.id))
    return list((await session.exec(stmt)).all())


async def notes(session: AsyncSession, change: ChangeRequest) -> list[ChangeNote]:
    stmt = (
        select(ChangeNote)
        .where(ChangeNote.change_id == change.id)
        .order_by(col(ChangeNote.created_at), col(ChangeNote.id))
    )
    return list((await session.exec(stmt)).all())


async def approvals(session: AsyncSession, change: ChangeRequest) -> list[ChangeApproval]:
    stmt = (
        select(ChangeApproval)
        .where(ChangeApproval.change_id == change.id)
        .order_by(col(ChangeApproval.created_at), col(ChangeApproval.id))
    )
    return list((await session.exec(stmt)).all())


def transitions(change: ChangeRequest, principal: Principal) -> list[dict[str, Any]]:
    if not principal.has(*WRITERS):
        return []
    return lifecycle.transitions_from(change.type, change.status, change.approval)


# ---------------------------------------------------------------- writing: the one seam


async def _emit(
    session: AsyncSession,
    action: str,
    change: ChangeRequest,
    actor: str,
    changes: dict[str, list[Any]] | None = None,
    **extra: Any,
) -> None:
    data = render(change).model_dump(mode="json")
    data.update(extra)
    await outbox.emit(
        session,
        service=SERVICE,
        type=f"change.{action}",
        subject=change.id,
        data=data,
        actor=actor,
        sequence=change.version,
        changes=changes,
    )


async def _save(
    session: AsyncSession,
    change: ChangeRequest,
    fields: FieldEdits,
    actor: str,
    now: datetime,
    *,
    decision: dict[str, Any] | None = None,
    rescheduled: bool = False,
) -> None:
    """History, version and events of one use case on one RFC; the caller commits. A CAB decision changes the
    RFC even when no field does: it is a history row and a version of its own."""
    changed = dict(fields.fields)
    if not changed and decision is None:
        return
    change.version += 1
    change.updated_at = now
    session.add(change)
    for field, (old, new) in changed.items():
        session.add(ChangeHistory(change_id=change.id, actor_id=actor, field=field, old=old, new=new, at=now))
    if decision is not None:
        row = ChangeHistory(change_id=change.id, actor_id=actor, field="approval_decision", new=decision, at=now)
        session.add(row)
    await session.flush()
    if changed:
        await _emit(session, "updated", change, actor, changed)
    if decision is not None:
        action = "approved" if decision["decision"] == Decision.APPROVE else "rejected"
        await _emit(session, action, change, actor, changed, approval_decision=decision)
    if "status" in changed:
        await _emit(session, "status_changed", change, actor, {"status": changed["status"]})
        old, new = changed["status"]
        if new == Status.SCHEDULED:
            await _emit(session, "scheduled", change, actor, changed)
        elif old == Status.IMPLEMENT and new == Status.REVIEW:
            await _emit(session, "implemented", change, actor, changed)
        elif new == Status.CLOSED:
            await _emit(session, "closed", change, actor, changed)
    elif rescheduled:
        await _emit(session, "scheduled", change, actor, changed)


def _set_risk(fields: FieldEdits, change: ChangeRequest) -> None:
    """computed_risk from the questionnaire; risk = the override, else the computed one, else low for a
    standard change (pre-approved as low risk), else unknown until assessed."""
    computed = risk.assess(change.risk_assessment).risk if change.risk_assessment else None
    fields.set("computed_risk", computed)
    effective = change.risk_override or computed or (Risk.LOW if change.type == ChangeType.STANDARD else None)
    fields.set("risk", effective)


def _check_window(start: datetime | None, end: datetime | None, what: str) -> None:
    if start is not None and end is not None and end <= start:
        raise _invalid(f"{what}_end", f"{what}_end must be after {what}_start")


async def _ensure_schedulable(session: AsyncSession, change: ChangeRequest) -> None:
    """409 listing every blocking conflict of the RFC's planned window."""
    assert change.planned_start is not None
    assert change.planned_end is not None
    await scheduling.lock_items(session, change.configuration_items)
    found = await scheduling.conflicts(
        session,
        exclude=change.id,
        start=change.planned_start,
        end=change.planned_end,
        cis=change.configuration_items,
        blackouts_block=change.type != ChangeType.EMERGENCY,
    )
    blocking = [c for c in found if c.blocking]
    if blocking:
        raise Conflict(
            f"the planned window conflicts with {len(blocking)} scheduled change(s) or blackout window(s)",
            extra={"conflicts": [c.as_dict() for c in blocking]},
        )


# ---------------------------------------------------------------- RFCs


async def raise_change(session: AsyncSession, data: ChangeCreate, actor: Principal) -> ChangeRead:
    """Create an RFC in new; the caller's transaction seam commits."""
    require_writer(actor)
    _check_window(data.planned_start, data.planned_end, "planned")
    now = utcnow()
    values = data.model_dump(exclude={"risk_assessment"})
    change = ChangeRequest(
        **values,
        risk_assessment=data.risk_assessment.model_dump() if data.risk_assessment else None,
        approval=Approval.NOT_REQUIRED if data.type == ChangeType.STANDARD else Approval.NOT_REQUESTED,
        requested_by=actor.id,
        created_at=now,
        updated_at=now,
    )
    _set_risk(FieldEdits(change), change)
    session.add(change)
    await session.flush()
    await session.refresh(change)
    await _emit(session, "created", change, actor.actor)
    return render(change)


async def update_change(
    session: AsyncSession, change: ChangeRequest, data: ChangeUpdate, actor: Principal
) -> ChangeRead:
    require_writer(actor)
    values = data.model_dump(exclude_unset=True)
    if change.status in (Status.CLOSED, Status.CANCELLED):
        raise Conflict(f"a {change.status} change is final")
    for name in ("type", "title"):
        if name in values and values[name] is None:
            raise _invalid(name, f"{name} cannot be null")
    target = values.pop("status", None)
    if target is not None and target not in set(Status):
        raise _invalid("status", f"one of {sorted(Status)}")
    now = utcnow()
    fields = FieldEdits(change)

    if "type" in values and values["type"] != change.type:
        if change.status not in lifecycle.TYPE_EDITABLE:
            raise Conflict("the type of a change can be changed only while it is new")
        fields.set("type", values["type"])
        fields.set("approval", Approval.NOT_REQUIRED if change.type == ChangeType.STANDARD else Approval.NOT_REQUESTED)
    values.pop("type", None)

    risk_fields = {"risk_assessment", "risk_override", "risk_override_reason"}.intersection(values)
    if risk_fields and change.status not in lifecycle.RISK_EDITABLE:
        raise Conflict("risk is settled once authorization has opened; a rejection returns the change to new")
    if "risk_override" in values or "risk_override_reason" in values:
        if not actor.has(Role.CHANGE_MANAGER):
            raise Forbidden("only a change manager may override the risk")
        if "risk_override" not in values:
            raise _invalid("risk_override", "the reason goes with a risk_override")
        override, reason = values.pop("risk_override"), values.pop("risk_override_reason", None)
        if override is not None and not reason:
            raise _invalid("risk_override_reason", "a risk override needs a reason")
        fields.set("risk_override", override)
        fields.set("risk_override_reason", reason if override is not None else None)
    if "risk_assessment" in values:
        fields.set("risk_assessment", values.pop("risk_assessment"))

    closing = {"close_code", "close_notes"}.intersection(values)
    if closing and target not in (Status.CLOSED, Status.CANCELLED):
        raise _invalid(sorted(closing)[0], "close_code and close_notes go with a move to closed or cancelled")
    close_values = {k: values.pop(k) for k in list(closing)}

    for field, value in values.items():
        fields.set(field, value)
    _set_risk(fields, change)
    _check_window(change.planned_start, change.planned_end, "planned")
    _check_window(change.actual_start, change.actual_end, "actual")

    if target is not None and target != change.status:
        _apply_status(fields, change, target, {**close_values, **values}, now)

    if change.status in lifecycle.HOLDING and not all(getattr(change, f) for f in SCHEDULE_FIELDS):
        raise Invalid(
            f"a change in {change.status} keeps its planned window and configuration items",
            errors=[{"loc": ["body", f], "msg": "required"} for f in SCHEDULE_FIELDS if not getattr(change, f)],
        )
    rescheduled = False
    if change.status == Status.SCHEDULED and ("status" in fields or any(f in fields for f in SCHEDULE_FIELDS)):
        await _ensure_schedulable(session, change)
        rescheduled = "status" not in fields
    await _save(session, change, fields, actor.actor, now, rescheduled=rescheduled)
    await session.commit()
    return render(change)


def _apply_status(
    fields: FieldEdits, change: ChangeRequest, target: str, values: dict[str, Any], now: datetime
) -> None:
    merged = {**change.model_dump(), **values}
    lifecycle.check_transition(change.type, change.status, target, change.approval, merged)
    if target == Status.AUTHORIZE:
        fields.set("approval_round", change.approval_round + 1)
        fields.set("approval", Approval.REQUESTED)
    elif target == Status.IMPLEMENT:
        fields.set("actual_start", change.actual_start or now)
    elif target == Status.REVIEW:
        fields.set("actual_end", change.actual_end or max(now, change.actual_start or now))
    elif target == Status.CLOSED:
        fields.set("close_code", values["close_code"])
        fields.set("close_notes", values["close_notes"])
        fields.set("closed_at", now)
    elif target == Status.CANCELLED:
        if values.get("close_notes"):
            fields.set("close_notes", values["close_notes"])
        fields.set("closed_at", now)
    fields.set("status", target)


# ---------------------------------------------------------------- CAB approval


async def decide(
    session: AsyncSession, change: ChangeRequest, data: ApprovalCreate, actor: Principal
) -> tuple[ChangeApproval, ChangeRead]:
    """Record one CAB decision; the caller's transaction seam commits. A rejection returns the RFC to new; an
    approval that reaches the quorum of its risk approves it, and schedules it when its planned window is
    set and free (otherwise it waits in authorize, approved, for a PATCH to scheduled)."""
    role = approver_role(change)
    if not actor.has(role):
        who = "a change manager" if role == Role.CHANGE_MANAGER else "a CAB member"
        raise Forbidden(f"a {change.type} change is approved or rejected by {who}")
    if actor.id in (change.requested_by, change.assignee_id):
        raise Forbidden("nobody approves or rejects their own change")
    if change.status != Status.AUTHORIZE or change.approval != Approval.REQUESTED:
        raise Conflict(f"the change is not awaiting approval (status {change.status}, approval {change.approval})")
    if data.decision == Decision.REJECT and not (data.comment and data.comment.strip()):
        raise _invalid("comment", "a rejection needs a comment")
    already = (
        await session.exec(
            select(ChangeApproval).where(
                ChangeApproval.change_id == change.id,
                ChangeApproval.round == change.approval_round,
                ChangeApproval.approver_id == actor.id,
            )
        )
    ).first()
    if already is not None:
        raise Conflict("you have already decided on this change in this approval round")
    current_risk = Risk(change.risk) if change.risk else Risk.HIGH
    now = utcnow()
    approval = ChangeApproval(
        change_id=change.id,
        round=change.approval_round,
        approver_id=actor.id,
        decision=data.decision,
        comment=data.comment,
        risk=current_risk,
        created_at=now,
    )
    session.add(approval)
    await session.flush()
    fields = FieldEdits(change)
    approved = await session.exec(
        select(func.count())
        .select_from(ChangeApproval)
        .where(
            ChangeApproval.change_id == change.id,
            ChangeApproval.round == change.approval_round,
            ChangeApproval.decision == Decision.APPROVE,
        )
    )
    count, required = int(approved.one()), QUORUM[current_risk]
    if data.decision == Decision.REJECT:
        fields.set("approval", Approval.REJECTED)
        fields.set("status", Status.NEW)
    elif count >= required:
        fields.set("approval", Approval.APPROVED)
        if change.planned_start and change.planned_end and change.configuration_items:
            try:
                await _ensure_schedulable(session, change)
            except Conflict:
                pass  # approved, and waits in authorize until a free window is chosen
            else:
                fields.set("status", Status.SCHEDULED)
    decision = {
        "id": str(approval.id),
        "round": approval.round,
        "approver_id": str(actor.id),
        "decision": str(data.decision),
        "comment": data.comment,
        "risk": str(current_risk),
        "approvals": count,
        "required": required,
        "quorum_reached": data.decision == Decision.APPROVE and count >= required,
        "at": now.isoformat(),
    }
    await _save(session, change, fields, actor.actor, now, decision=decision)
    return approval, render(change)


# ---------------------------------------------------------------- notes


async def add_note(session: AsyncSession, change: ChangeRequest, data: NoteCreate, actor: Principal) -> ChangeNote:
    """The caller's transaction seam commits."""
    if not actor.has(*NOTE_WRITERS):
        raise Forbidden("auditors read changes; they do not write notes")
    now = utcnow()
    note = ChangeNote(change_id=change.id, author_id=actor.id, body=data.body, created_at=now)
    session.add(note)
    await session.flush()
    await outbox.emit(
        session,
        service=SERVICE,
        type="change.note_added",
        subject=change.id,
        actor=actor.actor,
        sequence=change.version,
        data={
            "change_id": str(change.id),
            "number": change.number,
            "note_id": str(note.id),
            "author_id": str(note.author_id),
            "body": note.body,
            "created_at": now.isoformat(),
        },
    )
    return note


# ---------------------------------------------------------------- conflicts and slots


def _conflict_reads(found: list[scheduling.Conflict]) -> list[ConflictRead]:
    return [ConflictRead.model_validate(c.as_dict()) for c in found]


async def change_conflicts(session: AsyncSession, change: ChangeRequest) -> ConflictsRead:
    found: list[scheduling.Conflict] = []
    if change.planned_start and change.planned_end:
        found = await scheduling.conflicts(
            session,
            exclude=change.id,
            start=change.planned_start,
            end=change.planned_end,
            cis=change.configuration_items,
            blackouts_block=change.type != ChangeType.EMERGENCY,
        )
    return ConflictsRead(
        change_id=change.id,
        planned_start=change.planned_start,
        planned_end=change.planned_end,
        configuration_items=change.configuration_items,
        conflicts=_conflict_reads(found),
    )


async def next_slot(
    session: AsyncSession,
    change: ChangeRequest,
    *,
    duration: timedelta | None,
    after: datetime | None,
    horizon_days: float,
) -> NextSlotRead:
    if duration is None:
        if not (change.planned_start and change.planned_end):
            raise _invalid("duration", "give a duration, or set the change's planned window", "query")
        duration = change.planned_end - change.planned_start
    if not timedelta(minutes=1) <= duration <= timedelta(days=31):
        raise _invalid("duration", "between one minute and 31 days", "query")
    if after is None:
        now = utcnow()
        after = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    elif after.tzinfo is None:
        raise _invalid("after", "a time with an offset (RFC 3339)", "query")
    until = after + timedelta(days=horizon_days)
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


# ---------------------------------------------------------------- calendar


async def calendar(
    session: AsyncSession, *, start: datetime, end: datetime, configuration_item: str | None, max_items: int
) -> CalendarRead:
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
        raise _invalid("end", f"more than {max_items} changes in this range: ask for a shorter one", "query")
    if configuration_item:
        windows = await scheduling.blackouts_for(session, [configuration_item])
    else:
        windows = list((await session.exec(select(BlackoutWindow))).all())
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
        for w in windows
        for o in scheduling.occurrences(w, start, end)
    ]
    blackouts.sort(key=lambda b: (b.start, str(b.id)))
    return CalendarRead(
        start=start,
        end=end,
        changes=[CalendarChange.model_validate(c, from_attributes=True) for c in rows],
        blackout_windows=blackouts,
    )


# ---------------------------------------------------------------- blackout windows


def render_blackout(window: BlackoutWindow) -> BlackoutWindowRead:
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


def _zone(name: str) -> Any:
    try:
        return scheduling.zone(name)
    except ValueError as exc:
        raise _invalid("timezone", str(exc)) from exc


def _check_blackout(window: BlackoutWindow) -> None:
    if window.ends_at <= window.starts_at:
        raise _invalid("end", "end must be after start")
    if window.rrule:
        try:
            scheduling.parse_rrule(window.rrule, window.starts_at, _zone(window.timezone))
        except ValueError as exc:
            raise _invalid("rrule", str(exc)) from exc


async def _emit_blackout(session: AsyncSession, action: str, window: BlackoutWindow, actor: str, **kw: Any) -> None:
    await outbox.emit(
        session,
        service=SERVICE,
        type=f"blackout_window.{action}",
        subject=window.id,
        data=render_blackout(window).model_dump(mode="json"),
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
    return [render_blackout(w) for w in items], next_cursor


BLACKOUT_SORTS = {"created_at": BlackoutWindow.created_at, "name": BlackoutWindow.name}


async def create_blackout(session: AsyncSession, data: BlackoutWindowCreate, actor: Principal) -> BlackoutWindowRead:
    """The caller's transaction seam commits."""
    require_change_manager(actor)
    now = utcnow()
    tz = _zone(data.timezone)
    window = BlackoutWindow(
        name=data.name,
        description=data.description,
        timezone=data.timezone,
        starts_at=scheduling.wall_clock(data.start, tz),
        ends_at=scheduling.wall_clock(data.end, tz),
        rrule=data.rrule,
        configuration_items=data.configuration_items,
        created_by=actor.id,
        created_at=now,
        updated_at=now,
    )
    _check_blackout(window)
    session.add(window)
    await session.flush()
    await _emit_blackout(session, "created", window, actor.actor)
    return render_blackout(window)


async def update_blackout(
    session: AsyncSession, window: BlackoutWindow, data: BlackoutWindowUpdate, actor: Principal
) -> BlackoutWindowRead:
    require_change_manager(actor)
    values = data.model_dump(exclude_unset=True)
    for name in ("name", "timezone", "start", "end"):
        if name in values and values[name] is None:
            raise _invalid(name, f"{name} cannot be null")
    fields = FieldEdits(window)
    for name in ("name", "description", "timezone", "rrule", "configuration_items"):
        if name in values:
            fields.set(name, values[name])
    # Wall-clock times in the (possibly new) time zone; a new zone alone keeps the wall-clock times.
    tz = _zone(window.timezone)
    for name, column in (("start", "starts_at"), ("end", "ends_at")):
        if values.get(name) is not None:
            fields.set(column, scheduling.wall_clock(values[name], tz))
    _check_blackout(window)
    if fields:
        window.version += 1
        window.updated_at = utcnow()
        session.add(window)
        await session.flush()
        await _emit_blackout(session, "updated", window, actor.actor, changes=fields.fields)
    await session.commit()
    return render_blackout(window)


async def delete_blackout(session: AsyncSession, window: BlackoutWindow, actor: Principal) -> None:
    require_change_manager(actor)
    window.version += 1
    await _emit_blackout(session, "deleted", window, actor.actor)
    await session.delete(window)
    await session.commit()
