"""Problem use cases: rules, rows and events in one transaction. Incidents are known from events only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from itsm_shared import outbox
from itsm_shared.auth import Principal, Role
from itsm_shared.changes import FieldChanges
from itsm_shared.contracts import ProblemIncidentLinkData, ProblemResolvedData
from itsm_shared.errors import Conflict, Forbidden, Invalid, NotFound
from itsm_shared.events import SYSTEM_ACTOR
from itsm_shared.pagination import Sort, keyset, page_of
from itsm_shared.priority import priority
from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from problem import lifecycle
from problem.models import (
    OPEN_STATUSES,
    IncidentRef,
    Problem,
    ProblemHistory,
    ProblemIncident,
    ProblemNote,
    Status,
)
from problem.schemas import LinkedIncident, NoteCreate, ProblemCreate, ProblemRead, ProblemUpdate

SERVICE = "problem"
MANAGERS = frozenset({Role.PROBLEM_MANAGER, Role.ADMIN})
LINKERS = MANAGERS | {Role.AGENT}
READERS = LINKERS | {Role.AUDITOR, Role.CHANGE_MANAGER, Role.CAB_MEMBER}


def utcnow() -> datetime:
    return datetime.now(UTC)


def require(principal: Principal, roles: frozenset[str], what: str) -> None:
    if not principal.has(*roles):
        raise Forbidden(f"{what} needs one of the roles: {', '.join(sorted(roles))}")


def render(problem: Problem) -> ProblemRead:
    return ProblemRead(**problem.model_dump(exclude={"search"}))


async def visible_problem(
    session: AsyncSession, ref: str, principal: Principal, *, for_update: bool = False
) -> Problem:
    require(principal, READERS, "reading problems")
    stmt = select(Problem)
    try:
        stmt = stmt.where(Problem.id == uuid.UUID(ref))
    except ValueError:
        stmt = stmt.where(Problem.number == ref.upper())
    if for_update:
        stmt = stmt.with_for_update()
    found = (await session.exec(stmt)).first()
    if found is None:
        raise NotFound("no such problem")
    return found


# ---------------------------------------------------------------- events and history


# Events another service consumes: their data is built through the one definition both sides share.
CONTRACTS: dict[str, type[BaseModel]] = {
    "incident_linked": ProblemIncidentLinkData,
    "incident_unlinked": ProblemIncidentLinkData,
    "resolved": ProblemResolvedData,
}


async def _emit(
    session: AsyncSession,
    action: str,
    problem: Problem,
    actor: str,
    changes: dict[str, list[Any]] | None = None,
    **extra: Any,
) -> None:
    data = render(problem).model_dump(mode="json") | extra
    if action in CONTRACTS:
        data = CONTRACTS[action].model_validate(data).model_dump(mode="json")
    await outbox.emit(
        session,
        service=SERVICE,
        type=f"problem.{action}",
        subject=problem.id,
        data=data,
        actor=actor,
        sequence=problem.version,
        changes=changes,
    )


def _history(session: AsyncSession, problem: Problem, actor: str, fields: dict[str, list[Any]], now: datetime) -> None:
    for field, (old, new) in fields.items():
        session.add(ProblemHistory(problem_id=problem.id, actor_id=actor, field=field, old=old, new=new, at=now))


def _bump(session: AsyncSession, problem: Problem, now: datetime) -> None:
    problem.version += 1
    problem.updated_at = now
    session.add(problem)


# ---------------------------------------------------------------- problems


async def open_problem(session: AsyncSession, data: ProblemCreate, actor: Principal) -> ProblemRead:
    """Create a problem; the caller's idempotency seam commits."""
    require(actor, LINKERS, "raising problems")
    now = utcnow()
    problem = Problem(
        **data.model_dump(),
        priority=priority(data.impact, data.urgency),
        created_by=actor.id,
        created_at=now,
        updated_at=now,
    )
    session.add(problem)
    await session.flush()
    await _emit(session, "created", problem, actor.actor)
    return render(problem)


async def update_problem(session: AsyncSession, problem: Problem, data: ProblemUpdate, actor: Principal) -> ProblemRead:
    require(actor, MANAGERS, "changing problems")
    values = data.model_dump(exclude_unset=True, exclude={"resolve_linked_incidents"})
    target = values.pop("status", None)
    for required in ("title", "impact", "urgency"):
        if required in values and values[required] is None:
            raise Invalid(f"{required} cannot be null", errors=[{"loc": ["body", required], "msg": "required"}])
    if problem.status in (Status.CLOSED, Status.CANCELLED):
        raise Conflict(f"a {problem.status} problem is final")
    if target is not None and target not in set(Status):
        raise Invalid(
            f"unknown status {target!r}", errors=[{"loc": ["body", "status"], "msg": f"one of {sorted(Status)}"}]
        )
    now = utcnow()
    changes = FieldChanges(problem)
    for field, value in values.items():
        changes.set(field, value)
    changes.set("priority", priority(problem.impact, problem.urgency))
    if problem.known_error and not problem.workaround:
        raise Invalid(
            "a known error needs a workaround",
            errors=[{"loc": ["body", "workaround"], "msg": "required for a known error"}],
        )
    published = "known_error" in changes and problem.known_error
    if published:
        changes.set("known_error_at", now)
    if target is not None and target != problem.status:
        lifecycle.check_transition(problem.status, target, problem.model_dump())
        changes.set("status", target)
        if target == Status.RESOLVED:
            changes.set("resolved_at", now)
        elif target in (Status.CLOSED, Status.CANCELLED):
            changes.set("closed_at", now)
    elif data.resolve_linked_incidents:
        raise Invalid(
            "resolve_linked_incidents goes with moving the problem to resolved",
            errors=[{"loc": ["body", "resolve_linked_incidents"], "msg": "only with status resolved"}],
        )
    if not changes:
        return render(problem)
    _bump(session, problem, now)
    _history(session, problem, actor.actor, changes.fields, now)
    await _emit(session, "updated", problem, actor.actor, changes.fields)
    if "status" in changes:
        await _emit(session, "status_changed", problem, actor.actor, changes.fields)
        if problem.status == Status.RESOLVED:
            incident_ids = [str(i) for i in await linked_ids(session, problem.id)]
            await _emit(
                session,
                "resolved",
                problem,
                actor.actor,
                incident_ids=incident_ids,
                resolve_linked_incidents=data.resolve_linked_incidents,
            )
    if published:
        await _emit(session, "known_error_published", problem, actor.actor)
    await session.commit()
    return render(problem)


SORTS = {
    "created_at": Problem.created_at,
    "updated_at": Problem.updated_at,
    "priority": Problem.priority,
    "number": Problem.number,
}


async def list_problems(
    session: AsyncSession,
    principal: Principal,
    *,
    sort: Sort,
    limit: int,
    cursor: str | None,
    filters: dict[str, Any],
    known_errors_only: bool = False,
) -> tuple[list[ProblemRead], str | None]:
    require(principal, READERS, "reading problems")
    stmt = select(Problem)
    if known_errors_only:
        stmt = stmt.where(col(Problem.known_error), Problem.status != Status.CANCELLED)
    for name in ("priority", "category", "configuration_item", "assignee_id", "assignment_group", "known_error"):
        if filters.get(name) is not None:
            stmt = stmt.where(getattr(Problem, name) == filters[name])
    if filters.get("status"):
        stmt = stmt.where(col(Problem.status).in_(filters["status"]))
    if filters.get("q"):
        stmt = stmt.where(col(Problem.search).op("@@")(func.websearch_to_tsquery("english", filters["q"])))
    rows = (await session.exec(keyset(stmt, sort, Problem.id, limit, cursor))).all()
    items, next_cursor = page_of(rows, sort, limit, value_of=lambda p: getattr(p, sort.name), id_of=lambda p: p.id)
    return [render(p) for p in items], next_cursor


async def add_note(session: AsyncSession, problem: Problem, data: NoteCreate, actor: Principal) -> ProblemNote:
    require(actor, LINKERS, "adding notes")
    note = ProblemNote(problem_id=problem.id, author_id=actor.id, body=data.body, created_at=utcnow())
    session.add(note)
    await session.commit()
    return note


async def notes(session: AsyncSession, problem: Problem) -> list[ProblemNote]:
    stmt = select(ProblemNote).where(ProblemNote.problem_id == problem.id)
    return list((await session.exec(stmt.order_by(col(ProblemNote.created_at), col(ProblemNote.id)))).all())


async def history(session: AsyncSession, problem: Problem) -> list[ProblemHistory]:
    stmt = select(ProblemHistory).where(ProblemHistory.problem_id == problem.id).order_by(col(ProblemHistory.id))
    return list((await session.exec(stmt)).all())


def transitions(problem: Problem, principal: Principal) -> list[dict[str, Any]]:
    return lifecycle.transitions_from(problem.status) if principal.has(*MANAGERS) else []


# ---------------------------------------------------------------- incident links


async def linked_ids(session: AsyncSession, problem_id: uuid.UUID) -> list[uuid.UUID]:
    stmt = select(ProblemIncident.incident_id).where(ProblemIncident.problem_id == problem_id)
    return list((await session.exec(stmt.order_by(col(ProblemIncident.linked_at)))).all())


async def linked_incidents(session: AsyncSession, problem: Problem) -> list[LinkedIncident]:
    stmt = (
        select(ProblemIncident, IncidentRef)
        .join(IncidentRef, col(IncidentRef.id) == col(ProblemIncident.incident_id), isouter=True)
        .where(ProblemIncident.problem_id == problem.id)
        .order_by(col(ProblemIncident.linked_at))
    )
    return [
        LinkedIncident(
            incident_id=link.incident_id,
            number=ref.number if ref else None,
            title=ref.title if ref else None,
            status=ref.status if ref else None,
            priority=ref.priority if ref else None,
            automatic=link.automatic,
            linked_by=link.linked_by,
            linked_at=link.linked_at or utcnow(),
        )
        for link, ref in (await session.exec(stmt)).all()
    ]


async def _link(session: AsyncSession, problem: Problem, incident: IncidentRef, actor: str, *, automatic: bool) -> None:
    now = utcnow()
    session.add(
        ProblemIncident(
            problem_id=problem.id, incident_id=incident.id, automatic=automatic, linked_by=actor, linked_at=now
        )
    )
    _bump(session, problem, now)
    _history(session, problem, actor, {"incident_link": [None, str(incident.id)]}, now)
    await _emit(
        session,
        "incident_linked",
        problem,
        actor,
        incident_id=str(incident.id),
        incident_number=incident.number,
        automatic=automatic,
    )


async def link_incident(
    session: AsyncSession, problem: Problem, incident_id: uuid.UUID, actor: Principal
) -> LinkedIncident:
    require(actor, LINKERS, "linking incidents")
    if problem.status in (Status.CLOSED, Status.CANCELLED):
        raise Conflict(f"a {problem.status} problem takes no new incidents")
    incident = await session.get(IncidentRef, incident_id)
    if incident is None or incident.deleted:
        raise Invalid("no such incident", errors=[{"loc": ["body", "incident_id"], "msg": "unknown incident"}])
    existing = (
        await session.exec(select(ProblemIncident).where(ProblemIncident.incident_id == incident_id).with_for_update())
    ).first()
    if existing is not None:
        if existing.problem_id != problem.id:
            raise Conflict(f"the incident is already linked to problem {existing.problem_id}; unlink it there first")
    else:
        await _link(session, problem, incident, actor.actor, automatic=False)
        await session.commit()
    return next(i for i in await linked_incidents(session, problem) if i.incident_id == incident_id)


async def unlink_incident(session: AsyncSession, problem: Problem, incident_id: uuid.UUID, actor: Principal) -> None:
    require(actor, LINKERS, "unlinking incidents")
    link = await session.get(ProblemIncident, (problem.id, incident_id), with_for_update=True)
    if link is None:
        raise NotFound("the incident is not linked to this problem")
    await session.delete(link)
    now = utcnow()
    _bump(session, problem, now)
    _history(session, problem, actor.actor, {"incident_link": [str(incident_id), None]}, now)
    await _emit(session, "incident_unlinked", problem, actor.actor, incident_id=str(incident_id))
    await session.commit()


# ---------------------------------------------------------------- from the incident service's events


READ_MODEL_FIELDS = ("number", "title", "status", "priority", "category", "configuration_item", "caller_id")


async def record_incident(
    session: AsyncSession, *, event_type: str, data: dict[str, Any], sequence: int
) -> IncidentRef | None:
    """Upsert the read model from an `incident.*` event, ignoring one older than what is stored.
    Returns the incident when this event was applied."""
    incident_id = uuid.UUID(str(data["id"]))
    ref = await session.get(IncidentRef, incident_id, with_for_update=True)
    if ref is not None and ref.sequence >= sequence and event_type != "itsm.incident.deleted":
        return None
    values = {f: data.get(f) for f in READ_MODEL_FIELDS}
    if values["caller_id"] is not None:
        values["caller_id"] = uuid.UUID(str(values["caller_id"]))
    if ref is None:
        ref = IncidentRef(id=incident_id, sequence=sequence)
    for field, value in values.items():
        setattr(ref, field, value)
    ref.sequence = max(ref.sequence, sequence)
    ref.deleted = ref.deleted or event_type == "itsm.incident.deleted"
    ref.updated_at = utcnow()
    session.add(ref)
    return ref


async def auto_link(session: AsyncSession, incident: IncidentRef) -> Problem | None:
    """Link a new incident to the open known error with the same configuration item and category."""
    if not incident.configuration_item or not incident.category:
        return None
    if (await session.exec(select(ProblemIncident).where(ProblemIncident.incident_id == incident.id))).first():
        return None
    problem = (
        await session.exec(
            select(Problem)
            .where(
                col(Problem.known_error),
                col(Problem.status).in_(OPEN_STATUSES),
                Problem.configuration_item == incident.configuration_item,
                Problem.category == incident.category,
            )
            .order_by(col(Problem.known_error_at).desc(), col(Problem.id))
            .limit(1)
            .with_for_update()
        )
    ).first()
    if problem is None:
        return None
    await _link(session, problem, incident, SYSTEM_ACTOR, automatic=True)
    return problem
