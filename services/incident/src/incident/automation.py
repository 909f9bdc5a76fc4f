"""Incident rules that run without a request: the SLA scheduler's thresholds, auto-close, and what the problem
service's events do to incidents. Same transaction seam as the API's use cases in `service`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

from itsm_shared.events import SYSTEM_ACTOR
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from incident import sla
from incident.models import OPEN_STATUSES, Incident, IncidentNote, ProblemLink, SlaClock, Status, Visibility
from incident.service import Change, clocks_of, emit, note_added, record_change, transition, utcnow

# ---------------------------------------------------------------- schedulers


async def fire_due_clocks(session: AsyncSession, *, limit: int = 100) -> int:
    """Fire the SLA warnings and breaches that are due, each once. Replicas share the work: an incident is
    locked (SKIP LOCKED) while its clocks are examined, and the fired flags commit with the events."""
    now = utcnow()
    due = (
        await session.exec(
            select(SlaClock.incident_id)
            .where(col(SlaClock.next_fire_at) <= now)
            .order_by(col(SlaClock.next_fire_at))
            .limit(limit)
        )
    ).all()
    fired = 0
    for incident_id in dict.fromkeys(due):
        incident = (
            await session.exec(
                select(Incident)
                .where(Incident.id == incident_id)
                .with_for_update(skip_locked=True)
                .execution_options(populate_existing=True)
            )
        ).first()
        if incident is None:
            continue
        clocks = (await clocks_of(session, [incident_id], lock=True))[incident_id]
        for clock in clocks.values():
            for threshold in sla.crossed(clock, now):
                session.add(clock)
                if threshold == "breached" and not incident.sla_breached:
                    incident.sla_breached = True
                    incident.version += 1
                    incident.updated_at = now
                    session.add(incident)
                await emit(
                    session,
                    f"sla_{threshold}",
                    incident,
                    clocks,
                    SYSTEM_ACTOR,
                    clock=clock.kind,
                    threshold=threshold,
                    due_at=clock.due_at and clock.due_at.isoformat(),
                )
                fired += 1
            session.add(clock)
        await session.commit()
    return fired


async def autoclose(session: AsyncSession, days: float, *, limit: int = 100) -> int:
    cutoff = utcnow() - timedelta(days=days)
    rows = (
        await session.exec(
            select(Incident)
            .where(
                Incident.status == Status.RESOLVED,
                col(Incident.resolved_at) <= cutoff,
                col(Incident.deleted_at).is_(None),
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    for incident in rows:
        await transition(session, incident, Status.CLOSED, SYSTEM_ACTOR)
    await session.commit()
    return len(rows)


# ---------------------------------------------------------------- from the problem service's events


async def apply_problem_link(
    session: AsyncSession,
    *,
    incident_id: uuid.UUID,
    problem_id: uuid.UUID,
    sequence: int,
    linked: bool,
    note: str | None,
) -> None:
    """Set or clear problem_id from problem.incident_linked / incident_unlinked, in sequence order per
    (incident, problem): an older event arriving late changes nothing."""
    incident = (await session.exec(select(Incident).where(Incident.id == incident_id).with_for_update())).first()
    state = await session.get(ProblemLink, (incident_id, problem_id), with_for_update=True)
    if state is not None and state.sequence >= sequence:
        return
    if state is None:
        state = ProblemLink(incident_id=incident_id, problem_id=problem_id, sequence=sequence, linked=linked)
    state.sequence, state.linked = sequence, linked
    session.add(state)
    if incident is None or incident.deleted_at is not None:
        return  # not ours (yet): the link state is kept, so a late incident.created changes nothing
    now = utcnow()
    clocks = (await clocks_of(session, [incident.id], lock=True))[incident.id]
    change = Change(incident, clocks, SYSTEM_ACTOR, now)
    if linked:
        change.set("problem_id", problem_id)
    elif incident.problem_id == problem_id:
        change.set("problem_id", None)
    await record_change(session, change)
    if linked and note:
        work_note = IncidentNote(
            incident_id=incident.id,
            author_id=uuid.UUID(int=0),
            visibility=Visibility.INTERNAL,
            body=note,
            created_at=now,
        )
        session.add(work_note)
        await session.flush()
        await note_added(session, incident, work_note, SYSTEM_ACTOR)


async def resolve_by_problem(session: AsyncSession, *, incident_ids: Sequence[uuid.UUID], notes: str) -> int:
    rows = (
        await session.exec(
            select(Incident)
            .where(
                col(Incident.id).in_(incident_ids),
                col(Incident.status).in_(OPEN_STATUSES),
                col(Incident.deleted_at).is_(None),
            )
            .with_for_update()
        )
    ).all()
    for incident in rows:
        await transition(
            session,
            incident,
            Status.RESOLVED,
            SYSTEM_ACTOR,
            values={"resolution_code": "solved_by_problem", "resolution_notes": notes},
        )
    return len(rows)
