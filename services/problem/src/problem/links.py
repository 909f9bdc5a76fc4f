"""Incident links: manual and automatic (an open known error with the same configuration item and category),
and the incident read model they rest on, kept from `incident.*` events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from itsm_shared.auth import Principal
from itsm_shared.errors import Conflict, Invalid, NotFound
from itsm_shared.events import SYSTEM_ACTOR, CloudEvent
from itsm_shared.records import Event
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from problem.models import OPEN_STATUSES, PROBLEMS, IncidentRef, Problem, ProblemIncident
from problem.schemas import LinkedIncident
from problem.service import FINAL, LINKERS, data, require, utcnow

# note_added carries the note, not the incident: nothing for the read model.
NOT_AN_INCIDENT = frozenset({"itsm.incident.note_added"})
READ_MODEL_FIELDS = ("number", "title", "status", "priority", "category", "configuration_item", "caller_id")


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
    extra = {"incident_id": str(incident.id), "incident_number": incident.number, "automatic": automatic}
    await _record_link(session, problem, actor, now, [None, str(incident.id)], Event("incident_linked", extra=extra))


async def _record_link(
    session: AsyncSession, problem: Problem, actor: str, now: datetime, change: list[Any], event: Event
) -> None:
    await PROBLEMS.record(
        session, problem, actor=actor, now=now, fields={"incident_link": change}, events=[event], data=data
    )


async def link_incident(
    session: AsyncSession, problem: Problem, incident_id: uuid.UUID, actor: Principal
) -> LinkedIncident:
    require(actor, LINKERS, "linking incidents")
    if problem.status in FINAL:
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
        await session.flush()
    return next(i for i in await linked_incidents(session, problem) if i.incident_id == incident_id)


async def unlink_incident(session: AsyncSession, problem: Problem, incident_id: uuid.UUID, actor: Principal) -> None:
    require(actor, LINKERS, "unlinking incidents")
    link = await session.get(ProblemIncident, (problem.id, incident_id), with_for_update=True)
    if link is None:
        raise NotFound("the incident is not linked to this problem")
    await session.delete(link)
    event = Event("incident_unlinked", extra={"incident_id": str(incident_id)})
    await _record_link(session, problem, actor.actor, utcnow(), [str(incident_id), None], event)


# ---------------------------------------------------------------- from the incident service's events


async def on_incident_event(session: AsyncSession, event: CloudEvent[dict[str, Any]]) -> None:
    """An `incident.*` event: keep the read model, and link a new incident to a matching known error."""
    if event.type in NOT_AN_INCIDENT or "id" not in event.data:
        return
    incident = await record_incident(session, event_type=event.type, data=event.data, sequence=event.sequence or 0)
    if incident is not None and event.type == "itsm.incident.created":
        await auto_link(session, incident)


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
