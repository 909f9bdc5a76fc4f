"""The incident read model, from `incident.*` events, and automatic linking to known errors."""

from __future__ import annotations

from typing import Any

from itsm_shared.app import Runtime
from itsm_shared.events import CloudEvent
from itsm_shared.inbox import handle_once, subscribe
from sqlmodel.ext.asyncio.session import AsyncSession

from problem import service

# note_added carries the note, not the incident: nothing for the read model.
NOT_AN_INCIDENT = frozenset({"itsm.incident.note_added"})


def register(rt: Runtime) -> list[str]:
    async def on_incident(event: CloudEvent[dict[str, Any]]) -> None:
        if event.type in NOT_AN_INCIDENT or "id" not in event.data:
            return

        async def effect(session: AsyncSession) -> None:
            incident = await service.record_incident(
                session, event_type=event.type, data=event.data, sequence=event.sequence or 0
            )
            if incident is not None and event.type == "itsm.incident.created":
                await service.auto_link(session, incident)

        await handle_once(rt.sessions, "problem.incidents", event, effect)

    return [
        subscribe(
            rt.broker,
            rt.settings,
            queue="problem.incidents",
            routing_key="incident.#",
            event_model=CloudEvent[dict[str, Any]],
            handler=on_incident,
            description="Keeps the incident read model and links new incidents to open known errors",
        ),
    ]
