"""The incident read model and automatic linking, from `incident.*` events: a thin adapter over `links`."""

from __future__ import annotations

from functools import partial
from typing import Any

from itsm_shared.app import Runtime
from itsm_shared.events import CloudEvent
from itsm_shared.inbox import handle_once, subscribe

from problem import links

QUEUE = "problem.incidents"


def register(rt: Runtime) -> list[str]:
    async def on_incident(event: CloudEvent[dict[str, Any]]) -> None:
        await handle_once(rt.sessions, QUEUE, event, partial(links.on_incident_event, event=event))

    return [
        subscribe(
            rt.broker,
            rt.settings,
            queue=QUEUE,
            routing_key="incident.#",
            event_model=CloudEvent[dict[str, Any]],
            handler=on_incident,
            description="Keeps the incident read model and links new incidents to open known errors",
        ),
    ]
