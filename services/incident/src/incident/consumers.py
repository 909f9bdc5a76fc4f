"""Events from the problem service: thin adapters over `automation`, once per event through the inbox."""

from __future__ import annotations

from functools import partial

from itsm_shared.app import Runtime
from itsm_shared.contracts import ProblemIncidentLinkEvent, ProblemResolvedEvent
from itsm_shared.inbox import handle_once, subscribe

from incident import automation

LINKS = "incident.problem-links"
RESOLUTIONS = "incident.problem-resolved"
# Only the problem service's broker user publishes what these queues take (itsm_shared.trust): anything else is parked.
PROBLEM = "problem"


def register(rt: Runtime) -> list[str]:
    settings, sessions = rt.settings, rt.sessions

    async def on_link(linked: bool, event: ProblemIncidentLinkEvent) -> None:
        await handle_once(sessions, LINKS, event, partial(automation.on_problem_link, event=event, linked=linked))

    async def on_resolved(event: ProblemResolvedEvent) -> None:
        await handle_once(sessions, RESOLUTIONS, event, partial(automation.on_problem_resolved, event=event))

    return [
        subscribe(
            rt.broker,
            settings,
            queue="incident.problem-linked",
            routing_key="problem.incident_linked",
            event_model=ProblemIncidentLinkEvent,
            handler=partial(on_link, True),
            publisher=PROBLEM,
            description="Sets problem_id and adds the workaround as a work note",
        ),
        subscribe(
            rt.broker,
            settings,
            queue="incident.problem-unlinked",
            routing_key="problem.incident_unlinked",
            event_model=ProblemIncidentLinkEvent,
            handler=partial(on_link, False),
            publisher=PROBLEM,
            description="Clears problem_id",
        ),
        subscribe(
            rt.broker,
            settings,
            queue="incident.problem-resolved",
            routing_key="problem.resolved",
            event_model=ProblemResolvedEvent,
            handler=on_resolved,
            publisher=PROBLEM,
            description="Resolves open linked incidents with solved_by_problem",
        ),
    ]
