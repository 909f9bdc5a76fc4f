"""The data of events one service consumes from another: one definition, used by producer and consumer.

`data` is the entity after the change (CONTRACT §8); these models name the fields a consumer relies on and
let the rest through."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict

from itsm_shared.events import CloudEvent


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


class ProblemIncidentLinkData(_Data):
    """problem.incident_linked / problem.incident_unlinked: the problem, plus which incident."""

    id: uuid.UUID  # the problem
    number: str | None = None
    incident_id: uuid.UUID
    workaround: str | None = None


class ProblemResolvedData(_Data):
    """problem.resolved: the problem, its linked incidents, and whether they are to be resolved with it."""

    id: uuid.UUID
    number: str | None = None
    resolution_code: str | None = None
    root_cause: str | None = None
    fix: str | None = None
    resolve_linked_incidents: bool = False
    incident_ids: list[uuid.UUID] = []


ProblemIncidentLinkEvent = CloudEvent[ProblemIncidentLinkData]
ProblemResolvedEvent = CloudEvent[ProblemResolvedData]
