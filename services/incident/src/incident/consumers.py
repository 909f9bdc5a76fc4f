"""Events from the problem service (issue #5 publishes them): thin adapters over the service layer."""

from __future__ import annotations

from functools import partial

from itsm_shared.app import Runtime
from itsm_shared.contracts import ProblemIncidentLinkEvent, ProblemResolvedEvent
from itsm_shared.inbox import handle_once, subscribe
from sqlmodel.ext.asyncio.session import AsyncSession

from incident import automation


def _link_note(event: ProblemIncidentLinkEvent) -> str | None:
    data = event.data
    if not data.workaround:
        return None
    return f"Linked to problem {data.number or data.id}. Workaround: {data.workaround}"


def register(rt: Runtime) -> list[str]:
    settings, sessions = rt.settings, rt.sessions

    async def on_link(linked: bool, event: ProblemIncidentLinkEvent) -> None:
        async def effect(session: AsyncSession) -> None:
            await automation.apply_problem_link(
                session,
                incident_id=event.data.incident_id,
                problem_id=event.data.id,
                sequence=event.sequence or 0,
                linked=linked,
                note=_link_note(event) if linked else None,
            )

        await handle_once(sessions, "incident.problem-links", event, effect)

    async def on_resolved(event: ProblemResolvedEvent) -> None:
        data = event.data
        if not data.resolve_linked_incidents or not data.incident_ids:
            return

        async def effect(session: AsyncSession) -> None:
            notes = f"Resolved by problem {data.number or data.id}."
            if data.root_cause:
                notes += f" Root cause: {data.root_cause}"
            if data.fix:
                notes += f" Fix: {data.fix}"
            await automation.resolve_by_problem(session, incident_ids=data.incident_ids, notes=notes)

        await handle_once(sessions, "incident.problem-resolved", event, effect)

    return [
        subscribe(
            rt.broker,
            settings,
            queue="incident.problem-linked",
            routing_key="problem.incident_linked",
            event_model=ProblemIncidentLinkEvent,
            handler=partial(on_link, True),
            description="Sets problem_id and adds the workaround as a work note",
        ),
        subscribe(
            rt.broker,
            settings,
            queue="incident.problem-unlinked",
            routing_key="problem.incident_unlinked",
            event_model=ProblemIncidentLinkEvent,
            handler=partial(on_link, False),
            description="Clears problem_id",
        ),
        subscribe(
            rt.broker,
            settings,
            queue="incident.problem-resolved",
            routing_key="problem.resolved",
            event_model=ProblemResolvedEvent,
            handler=on_resolved,
            description="Resolves open linked incidents with solved_by_problem",
        ),
    ]
