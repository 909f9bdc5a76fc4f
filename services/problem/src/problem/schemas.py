from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from itsm_shared.schemas import JsonInt, RequestBody
from pydantic import BaseModel, Field, StrictBool
from pydantic.json_schema import SkipJsonSchema

from problem.models import Status

READ_ONLY = frozenset(
    {
        "id",
        "number",
        "priority",
        "created_at",
        "updated_at",
        "resolved_at",
        "closed_at",
        "version",
        "created_by",
        "known_error_at",
        "incident_ids",
    }
)


class _Body(RequestBody):
    read_only = READ_ONLY


Text = Field(default=None, max_length=100_000)


class ProblemCreate(_Body):
    title: str = Field(min_length=1, max_length=200)
    description: str | None = Text
    impact: JsonInt = Field(default=3, ge=1, le=3)
    urgency: JsonInt = Field(default=3, ge=1, le=3)
    category: str | None = Field(default=None, max_length=100)
    configuration_item: str | None = Field(default=None, max_length=200)
    assignment_group: str | None = Field(default=None, max_length=100)
    assignee_id: uuid.UUID | None = None
    symptoms: str | None = Text
    workaround: str | None = Text


class ProblemUpdate(_Body):
    # May be left out, never null (`SkipJsonSchema[None]`: null is refused by the use case, with a 422 naming it).
    title: str | SkipJsonSchema[None] = Field(default=None, min_length=1, max_length=200)
    description: str | None = Text
    impact: Annotated[JsonInt, Field(ge=1, le=3)] | SkipJsonSchema[None] = None  # the bounds inside: null is no int
    urgency: Annotated[JsonInt, Field(ge=1, le=3)] | SkipJsonSchema[None] = None  # the bounds inside: null is no int
    category: str | None = Field(default=None, max_length=100)
    configuration_item: str | None = Field(default=None, max_length=200)
    assignment_group: str | None = Field(default=None, max_length=100)
    assignee_id: uuid.UUID | None = None
    symptoms: str | None = Text
    root_cause: str | None = Text
    workaround: str | None = Text
    fix: str | None = Text
    resolution_code: str | None = Field(default=None, max_length=30)
    known_error: StrictBool | None = None
    change_id: uuid.UUID | None = None
    status: Status | None = None
    # Not stored: with status resolved, also resolve the open linked incidents (solved_by_problem).
    resolve_linked_incidents: StrictBool = False


class ProblemRead(BaseModel):
    id: uuid.UUID
    number: str
    title: str
    description: str | None
    status: str
    impact: int
    urgency: int
    priority: int
    category: str | None
    configuration_item: str | None
    assignment_group: str | None
    assignee_id: uuid.UUID | None
    symptoms: str | None
    root_cause: str | None
    workaround: str | None
    fix: str | None
    resolution_code: str | None
    known_error: bool
    known_error_at: datetime | None
    change_id: uuid.UUID | None
    created_by: uuid.UUID
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    closed_at: datetime | None
    version: int


class LinkCreate(RequestBody):
    incident_id: uuid.UUID


class LinkedIncident(BaseModel):
    incident_id: uuid.UUID
    number: str | None
    title: str | None
    status: str | None
    priority: int | None
    automatic: bool
    linked_by: str
    linked_at: datetime


class NoteCreate(RequestBody):
    body: str = Field(min_length=1, max_length=100_000)


class NoteRead(BaseModel):
    id: uuid.UUID
    problem_id: uuid.UUID
    author_id: uuid.UUID
    body: str
    created_at: datetime
