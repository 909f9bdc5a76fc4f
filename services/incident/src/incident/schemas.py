from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from itsm_shared.schemas import JsonInt, RequestBody
from pydantic import BaseModel, Field, StrictFloat
from pydantic.json_schema import SkipJsonSchema

from incident.models import HoldReason, RequesterMode, Status, Visibility

READ_ONLY = frozenset(
    {
        "id",
        "number",
        "priority",
        "created_at",
        "updated_at",
        "resolved_at",
        "closed_at",
        "deleted_at",
        "sla",
        "version",
        "reopen_count",
        "problem_id",
        "created_by",
        "sla_breached",
    }
)

Impact = Field(default=3, ge=1, le=3)
Urgency = Field(default=3, ge=1, le=3)


class _Body(RequestBody):
    read_only = READ_ONLY


class IncidentCreate(_Body):
    title: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=100_000)
    caller_id: uuid.UUID | None = None
    category: str | None = Field(default=None, max_length=100)
    configuration_item: str | None = Field(default=None, max_length=200)
    impact: JsonInt = Impact
    urgency: JsonInt = Urgency
    assignment_group: str | None = Field(default=None, max_length=100)
    assignee_id: uuid.UUID | None = None
    parent_id: uuid.UUID | None = None


class IncidentUpdate(_Body):
    # May be left out, never null (`SkipJsonSchema[None]`: null is refused by the use case, with a 422 naming it).
    title: str | SkipJsonSchema[None] = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=100_000)
    caller_id: uuid.UUID | SkipJsonSchema[None] = None
    category: str | None = Field(default=None, max_length=100)
    configuration_item: str | None = Field(default=None, max_length=200)
    impact: Annotated[JsonInt, Field(ge=1, le=3)] | SkipJsonSchema[None] = None  # the bounds inside: null is no int
    urgency: Annotated[JsonInt, Field(ge=1, le=3)] | SkipJsonSchema[None] = None  # the bounds inside: null is no int
    status: Status | None = None
    hold_reason: HoldReason | None = None
    assignment_group: str | None = Field(default=None, max_length=100)
    assignee_id: uuid.UUID | None = None
    resolution_code: str | None = Field(default=None, max_length=50)
    resolution_notes: str | None = Field(default=None, max_length=100_000)
    parent_id: uuid.UUID | None = None


class ClockRead(BaseModel):
    target_seconds: float
    due_at: datetime | None
    elapsed_seconds: float
    percentage: float | None
    state: str
    paused: bool
    breached: bool
    met: bool
    started_at: datetime
    stopped_at: datetime | None


class SlaRead(BaseModel):
    response_due: datetime | None
    resolution_due: datetime | None
    breached: bool
    response: ClockRead | None
    resolution: ClockRead | None


class IncidentRead(BaseModel):
    id: uuid.UUID
    number: str
    title: str
    description: str | None
    caller_id: uuid.UUID
    category: str | None
    configuration_item: str | None
    impact: int
    urgency: int
    priority: int
    status: str
    hold_reason: str | None
    assignment_group: str | None
    assignee_id: uuid.UUID | None
    resolution_code: str | None
    resolution_notes: str | None
    problem_id: uuid.UUID | None
    parent_id: uuid.UUID | None
    reopen_count: int
    created_by: uuid.UUID
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    closed_at: datetime | None
    sla: SlaRead
    version: int


class NoteCreate(RequestBody):
    body: str = Field(min_length=1, max_length=100_000)
    # Unset: public for a requester (their only kind), internal (a work note) for everyone else.
    visibility: Visibility | None = None


class NoteRead(BaseModel):
    id: uuid.UUID
    incident_id: uuid.UUID
    author_id: uuid.UUID
    visibility: str
    body: str
    created_at: datetime


# HH:MM or HH:MM:SS[.ffffff], a real time of day.
TIME_OF_DAY = r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?$"


class CalendarBody(RequestBody):
    kind: str = Field(pattern="^(24x7|business_hours)$")
    timezone: str = Field(default="UTC", min_length=1, max_length=100, description="an IANA time zone name")
    weekdays: list[Annotated[JsonInt, Field(ge=0, le=6)]] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4], min_length=1, description="0 (Monday) to 6 (Sunday)"
    )
    start: str = Field(default="08:00", pattern=TIME_OF_DAY)
    end: str = Field(default="18:00", pattern=TIME_OF_DAY, description="after start")
    holidays: list[Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]] = Field(default_factory=list)


class SlaPolicyWrite(RequestBody):
    name: str = Field(min_length=1, max_length=100)
    response_minutes: StrictFloat = Field(gt=0, le=525_600)
    resolution_minutes: StrictFloat = Field(gt=0, le=5_256_000)
    calendar: CalendarBody


class SlaPolicyRead(BaseModel):
    priority: int
    name: str
    response_minutes: float
    resolution_minutes: float
    calendar: dict[str, Any]
    version: int
    updated_at: datetime | None


class RequesterPolicyWrite(RequestBody):
    mode: RequesterMode
    # Used by `cap`: a requester's incident gets this priority at the highest (1 critical .. 5 planning).
    highest_priority: JsonInt = Field(default=3, ge=1, le=5)


class RequesterPolicyRead(BaseModel):
    mode: RequesterMode
    highest_priority: int
    version: int
    updated_at: datetime | None
