"""The data of events one service consumes from another: one definition, used by producer and consumer.

`data` is the entity after the change (CONTRACT §8); these models name the fields a consumer relies on and
let the rest through. Texts are bounded as the producer bounds them (a longer one is not an event it sent)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from itsm_shared.events import CloudEvent


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


NUMBER = Field(default=None, max_length=32)
TEXT = Field(default=None, max_length=100_000)  # the problem service's own bound on its texts


class ProblemIncidentLinkData(_Data):
    """problem.incident_linked / problem.incident_unlinked: the problem, plus which incident."""

    id: uuid.UUID  # the problem
    number: str | None = NUMBER
    incident_id: uuid.UUID
    workaround: str | None = TEXT


class ProblemResolvedData(_Data):
    """problem.resolved: the problem, its linked incidents, and whether they are to be resolved with it."""

    id: uuid.UUID
    number: str | None = NUMBER
    resolution_code: str | None = Field(default=None, max_length=50)
    root_cause: str | None = TEXT
    fix: str | None = TEXT
    resolve_linked_incidents: bool = False
    incident_ids: list[uuid.UUID] = []


ProblemIncidentLinkEvent = CloudEvent[ProblemIncidentLinkData]
ProblemResolvedEvent = CloudEvent[ProblemResolvedData]
