"""The incident read model and automatic linking, from `incident.*` events: a thin adapter over `links`.

`problem.incidents` is consumed in batches (`itsm_shared.batches`): a burst of incident events is a few
transactions, not one each. The inbox claims each batch's event ids in one statement, so a redelivery is a
duplicate that changes nothing; what is not a CloudEvent, or not an incident, is parked."""

from __future__ import annotations

import uuid
from typing import Any

from itsm_shared.app import Runtime
from itsm_shared.batches import cloud_events, consume_batches, run_batch_consumers
from itsm_shared.events import CloudEvent

from problem import links

QUEUE = "problem.incidents"  # batches of the shared defaults (itsm_shared.batches.BatchConsumer)

IncidentEvent = CloudEvent[dict[str, Any]]


def _event_id(event: IncidentEvent) -> uuid.UUID:
    return event.id


def register(rt: Runtime) -> list[str]:
    return [
        consume_batches(
            rt,
            queue=QUEUE,
            routing_key="incident.#",
            parse=cloud_events(IncidentEvent),
            handle=links.on_incident_events,
            publisher="incident",  # only the incident service's broker user (itsm_shared.trust); the rest is parked
            event_id=_event_id,
            description="Keeps the incident read model and links new incidents to open known errors",
        ),
    ]


async def run(rt: Runtime) -> None:
    await run_batch_consumers(rt)
