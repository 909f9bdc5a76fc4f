"""Problem use cases: rules, rows and events in one transaction (the seam commits). Incidents are known from
events only; links and the incident read model are in `links`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from itsm_shared.auth import Principal, Role
from itsm_shared.edits import FieldEdits
from itsm_shared.errors import Conflict, Forbidden, Invalid
from itsm_shared.pagination import Sort, keyset, page_of
from itsm_shared.priority import priority
from itsm_shared.records import Event
from itsm_shared.schemas import HistoryRead, Transition
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from problem.lifecycle import MACHINE
from problem.models import PROBLEMS, Problem, ProblemIncident, ProblemNote, Status
from problem.schemas import NoteCreate, ProblemCreate, ProblemRead, ProblemUpdate

MANAGERS = frozenset({Role.PROBLEM_MANAGER, Role.ADMIN})
LINKERS = MANAGERS | {Role.AGENT}
READERS = LINKERS | {Role.AUDITOR, Role.CHANGE_MANAGER, Role.CAB_MEMBER}
FINAL = (Status.CLOSED, Status.CANCELLED)


def utcnow() -> datetime:
    return datetime.now(UTC)


def require(principal: Principal, roles: frozenset[str], what: str) -> None:
    if not principal.has(*roles):
        raise Forbidden(f"{what} needs one of the roles: {', '.join(sorted(roles))}")


def render(problem: Problem) -> ProblemRead:
    return ProblemRead(**problem.model_dump(exclude={"search"}))


def data(problem: Problem) -> dict[str, Any]:
    """The `data` of a problem's events."""
    return render(problem).model_dump(mode="json")


async def visible(session: AsyncSession, ref: str, principal: Principal, *, for_update: bool = False) -> Problem:
    """The problem by id or number, for a principal who reads problems; else 403 or 404."""
    require(principal, READERS, "reading problems")
    return await PROBLEMS.load(session, ref, for_update=for_update)


# ---------------------------------------------------------------- problems


async def open_problem(session: AsyncSession, body: ProblemCreate, actor: Principal) -> ProblemRead:
    require(actor, LINKERS, "raising problems")
    now = utcnow()
    problem = Problem(
        **body.model_dump(),
        priority=priority(body.impact, body.urgency),
        created_by=actor.id,
        created_at=now,
        updated_at=now,
    )
    session.add(problem)
    await session.flush()
    await PROBLEMS.record(
        session, problem, actor=actor.actor, now=now, fields={}, events=[Event("created")], data=data, bump=False
    )
    return render(problem)


async def update_problem(session: AsyncSession, problem: Problem, body: ProblemUpdate, actor: Principal) -> ProblemRead:
    require(actor, MANAGERS, "changing problems")
    values = body.model_dump(exclude_unset=True, exclude={"resolve_linked_incidents"})
    target = values.pop("status", None)
    for required in ("title", "impact", "urgency"):
        if required in values and values[required] is None:
            raise Invalid(f"{required} cannot be null", errors=[{"loc": ["body", required], "msg": "required"}])
    if problem.status in FINAL:
        raise Conflict(f"a {problem.status} problem is final")
    if target is not None and target not in set(Status):
        raise Invalid(
            f"unknown status {target!r}", errors=[{"loc": ["body", "status"], "msg": f"one of {sorted(Status)}"}]
        )
    now = utcnow()
    edits = FieldEdits(problem)
    for field, value in values.items():
        edits.set(field, value)
    edits.set("priority", priority(problem.impact, problem.urgency))
    if problem.known_error and not problem.workaround:
        raise Invalid(
            "a known error needs a workaround",
            errors=[{"loc": ["body", "workaround"], "msg": "required for a known error"}],
        )
    published = "known_error" in edits and problem.known_error
    if published:
        edits.set("known_error_at", now)
    if target is not None and target != problem.status:
        MACHINE.check(problem.status, target, problem.model_dump())
        edits.set("status", target)
        if target == Status.RESOLVED:
            edits.set("resolved_at", now)
        elif target in FINAL:
            edits.set("closed_at", now)
    elif body.resolve_linked_incidents:
        raise Invalid(
            "resolve_linked_incidents goes with moving the problem to resolved",
            errors=[{"loc": ["body", "resolve_linked_incidents"], "msg": "only with status resolved"}],
        )
    if not edits:
        return render(problem)
    events = [Event("updated", edits.fields)]
    if "status" in edits:
        events.append(Event("status_changed", edits.fields))
        if problem.status == Status.RESOLVED:
            incident_ids = [str(i) for i in await linked_ids(session, problem.id)]
            extra = {"incident_ids": incident_ids, "resolve_linked_incidents": body.resolve_linked_incidents}
            events.append(Event("resolved", extra=extra))
    if published:
        events.append(Event("known_error_published"))
    await PROBLEMS.record(session, problem, actor=actor.actor, now=now, fields=edits.fields, events=events, data=data)
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


async def add_note(session: AsyncSession, problem: Problem, body: NoteCreate, actor: Principal) -> ProblemNote:
    require(actor, LINKERS, "adding notes")
    note = ProblemNote(problem_id=problem.id, author_id=actor.id, body=body.body, created_at=utcnow())
    session.add(note)
    await session.flush()
    return note


async def notes(session: AsyncSession, problem: Problem) -> Sequence[ProblemNote]:
    stmt = select(ProblemNote).where(ProblemNote.problem_id == problem.id)
    return (await session.exec(stmt.order_by(col(ProblemNote.created_at), col(ProblemNote.id)))).all()


async def history(session: AsyncSession, problem: Problem) -> list[HistoryRead]:
    return await PROBLEMS.history(session, problem)


def transitions(problem: Problem, principal: Principal) -> list[Transition]:
    return MACHINE.next_states(problem.status, {}) if principal.has(*MANAGERS) else []


async def linked_ids(session: AsyncSession, problem_id: uuid.UUID) -> Sequence[uuid.UUID]:
    stmt = select(ProblemIncident.incident_id).where(ProblemIncident.problem_id == problem_id)
    return (await session.exec(stmt.order_by(col(ProblemIncident.linked_at)))).all()
