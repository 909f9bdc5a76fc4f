"""Incident rules that run without a request: the SLA scheduler's thresholds, auto-close, and what the problem
service's events do to incidents. They write in the transaction their caller's seam opened (the scheduler
loops, `handle_once`) and never commit."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import timedelta

from itsm_shared.contracts import ProblemIncidentLinkEvent, ProblemResolvedEvent
from itsm_shared.events import SYSTEM_ACTOR
from itsm_shared.inbox import PermanentError
from itsm_shared.records import Event
from itsm_shared.trust import sequence_refusal
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from incident import sla
from incident.models import OPEN_STATUSES, Incident, IncidentNote, ProblemLink, SlaClock, Status, Visibility
from incident.queries import utcnow
from incident.service import edit, note_added, save, transition

# ---------------------------------------------------------------- schedulers


async def fire_due_clocks(session: AsyncSession, *, limit: int = 100) -> int:
    """Fire the SLA warnings and breaches that are due, each once, for up to `limit` incidents. Replicas share
    the work: an incident is locked (SKIP LOCKED) while its clocks are examined, and the fired flags commit with
    the events. Returns how many thresholds fired."""
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
        edited = await edit(session, incident, SYSTEM_ACTOR, now)
        for clock in edited.clocks.values():
            for threshold in sla.crossed(clock, now):
                breach = threshold == "breached" and not incident.sla_breached
                if breach:
                    incident.sla_breached = True
                extra = {
                    "clock": clock.kind,
                    "threshold": threshold,
                    "due_at": clock.due_at and clock.due_at.isoformat(),
                }
                # The first breach is a new version of the incident (sla_breached); a warning is not.
                await save(session, edited, [Event(f"sla_{threshold}", extra=extra)], fields={}, bump=breach)
                fired += 1
    return fired


async def autoclose(session: AsyncSession, days: float, *, limit: int = 100) -> int:
    """Close up to `limit` incidents resolved more than `days` ago."""
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
    return len(rows)


# ---------------------------------------------------------------- from the problem service's events
# Only the problem service's broker user publishes these (incident.consumers, itsm_shared.trust); still, what they
# do is checked against what this service knows: a sequence far ahead of the link's is refused, a resolution
# resolves only the incidents linked to that problem here, and a work note carries plain, bounded text.

# Control characters but tab and newline: a note is plain text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def link_note(event: ProblemIncidentLinkEvent) -> str | None:
    """The work note a link adds: the problem's workaround (bounded by the contract), when it has one."""
    data = event.data
    workaround = _CONTROL.sub("", data.workaround or "").strip()
    if not workaround:
        return None
    return f"Linked to problem {_CONTROL.sub('', data.number or '') or data.id}. Workaround: {workaround}"


async def on_problem_link(session: AsyncSession, event: ProblemIncidentLinkEvent, *, linked: bool) -> None:
    """problem.incident_linked / problem.incident_unlinked."""
    await apply_problem_link(
        session,
        incident_id=event.data.incident_id,
        problem_id=event.data.id,
        sequence=event.sequence or 0,
        linked=linked,
        note=link_note(event) if linked else None,
    )


async def apply_problem_link(
    session: AsyncSession,
    *,
    incident_id: uuid.UUID,
    problem_id: uuid.UUID,
    sequence: int,
    linked: bool,
    note: str | None,
) -> None:
    """Set or clear problem_id, in sequence order per (incident, problem): an older event arriving late changes
    nothing. A sequence more than MAX_SEQUENCE_GAP ahead of the highest applied for this link (for a new link: of
    the problem's links) is refused (PermanentError: parked): applied, it would hide every later event of the link."""
    incident = (await session.exec(select(Incident).where(Incident.id == incident_id).with_for_update())).first()
    state = await session.get(ProblemLink, (incident_id, problem_id), with_for_update=True)
    if state is not None and state.sequence >= sequence:
        return
    seen = state.sequence if state is not None else await highest_link_sequence(session, problem_id)
    if (refused := sequence_refusal(sequence, seen)) is not None:
        raise PermanentError(f"problem {problem_id}, incident {incident_id}: {refused}")
    if state is None:
        state = ProblemLink(incident_id=incident_id, problem_id=problem_id, sequence=sequence, linked=linked)
    state.sequence, state.linked = sequence, linked
    session.add(state)
    if incident is None or incident.deleted_at is not None:
        return  # not ours (yet): the link state is kept, so a late incident.created changes nothing
    edited = await edit(session, incident, SYSTEM_ACTOR, utcnow())
    if linked:
        edited.set("problem_id", problem_id)
    elif incident.problem_id == problem_id:
        edited.set("problem_id", None)
    await save(session, edited)
    if linked and note:
        work_note = IncidentNote(
            incident_id=incident.id,
            author_id=uuid.UUID(int=0),
            visibility=Visibility.INTERNAL,
            body=note,
            created_at=edited.now,
        )
        session.add(work_note)
        await session.flush()
        await note_added(session, incident, work_note, SYSTEM_ACTOR)


async def highest_link_sequence(session: AsyncSession, problem_id: uuid.UUID) -> int | None:
    """The highest sequence applied of any of the problem's links (None: none yet)."""
    statement = select(func.max(ProblemLink.sequence)).where(ProblemLink.problem_id == problem_id)
    highest: int | None = (await session.exec(statement)).one()
    return highest


def resolution_notes(event: ProblemResolvedEvent) -> str:
    data = event.data
    notes = f"Resolved by problem {data.number or data.id}."
    if data.root_cause:
        notes += f" Root cause: {data.root_cause}"
    if data.fix:
        notes += f" Fix: {data.fix}"
    return notes


async def on_problem_resolved(session: AsyncSession, event: ProblemResolvedEvent) -> int:
    """problem.resolved: with `resolve_linked_incidents`, resolve the open incidents it lists that are linked to it."""
    if not event.data.resolve_linked_incidents or not event.data.incident_ids:
        return 0
    return await resolve_by_problem(
        session, problem_id=event.data.id, incident_ids=event.data.incident_ids, notes=resolution_notes(event)
    )


async def resolve_by_problem(
    session: AsyncSession, *, problem_id: uuid.UUID, incident_ids: Sequence[uuid.UUID], notes: str
) -> int:
    """Resolve those of `incident_ids` that are open and linked to `problem_id` here (their `problem_id`, set by the
    problem's link event): the event's list alone resolves nothing. Returns how many were resolved."""
    rows = (
        await session.exec(
            select(Incident)
            .where(
                col(Incident.id).in_(incident_ids),
                Incident.problem_id == problem_id,
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
