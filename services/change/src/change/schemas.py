from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from itsm_shared.schemas import AsDateTime, RequestBody
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, StrictBool

from change.models import ChangeType, CloseCode, Decision, Risk
from change.risk import RiskAssessment

READ_ONLY = frozenset(
    {
        "id",
        "number",
        "risk",
        "computed_risk",
        "risk_details",
        "approval",
        "approval_round",
        "requested_by",
        "created_at",
        "updated_at",
        "closed_at",
        "version",
    }
)


def _unique_items(items: list[str]) -> list[str]:
    cleaned = [i.strip() for i in items]
    if any(not i for i in cleaned):
        raise ValueError("configuration items cannot be blank")
    return list(dict.fromkeys(cleaned))


# Each item holds something besides white space (the pattern is searched for, as JSON Schema does).
ConfigurationItems = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S")]],
    Field(max_length=100),
    AfterValidator(_unique_items),
]


def _representable(value: datetime) -> datetime:
    """A time that every offset and a day's margin either side still leave within the calendar (years 2 to 9997):
    beyond, arithmetic on it would overflow."""
    if not 2 <= value.year <= 9997:
        raise ValueError("a time in the years 2 to 9997")
    return value


# Times in bodies and query parameters.
Time = Annotated[datetime, AsDateTime, AfterValidator(_representable)]
AwareTime = Annotated[AwareDatetime, AsDateTime, AfterValidator(_representable)]
UuidList = Annotated[list[uuid.UUID], Field(max_length=200), AfterValidator(lambda v: list(dict.fromkeys(v)))]
Text = Annotated[str, Field(max_length=100_000)]


class _Body(RequestBody):
    read_only = READ_ONLY


class ChangeCreate(_Body):
    type: ChangeType
    title: str = Field(min_length=1, max_length=200)
    description: Text | None = None
    justification: Text | None = None
    implementation_plan: Text | None = None
    backout_plan: Text | None = None
    test_plan: Text | None = None
    risk_assessment: RiskAssessment | None = None
    configuration_items: ConfigurationItems = Field(default_factory=list)
    planned_start: AwareTime | None = None
    planned_end: AwareTime | None = None
    incident_ids: UuidList = Field(default_factory=list)
    problem_ids: UuidList = Field(default_factory=list)
    assignment_group: str | None = Field(default=None, max_length=100)
    assignee_id: uuid.UUID | None = None
    standard_template_id: uuid.UUID | None = None


class ChangeUpdate(_Body):
    not_null = frozenset({"type", "title"})
    type: ChangeType | None = None
    title: str | None = Field(default=None, min_length=1, max_length=200)
    description: Text | None = None
    justification: Text | None = None
    implementation_plan: Text | None = None
    backout_plan: Text | None = None
    test_plan: Text | None = None
    risk_assessment: RiskAssessment | None = None
    risk_override: Risk | None = None
    risk_override_reason: str | None = Field(default=None, min_length=1, max_length=10_000)
    configuration_items: ConfigurationItems | None = None
    planned_start: AwareTime | None = None
    planned_end: AwareTime | None = None
    actual_start: AwareTime | None = None
    actual_end: AwareTime | None = None
    incident_ids: UuidList | None = None
    problem_ids: UuidList | None = None
    assignment_group: str | None = Field(default=None, max_length=100)
    assignee_id: uuid.UUID | None = None
    status: str | None = None
    close_code: CloseCode | None = None
    close_notes: Text | None = None
    standard_template_id: uuid.UUID | None = None


class RiskDetails(BaseModel):
    score: int
    score_risk: Risk
    rules: list[str]


class ChangeRead(BaseModel):
    id: uuid.UUID
    number: str
    type: ChangeType
    title: str
    description: str | None
    justification: str | None
    status: str
    approval: str
    approval_round: int
    risk: Risk | None
    computed_risk: Risk | None
    risk_details: RiskDetails | None
    risk_assessment: dict[str, Any] | None
    risk_override: Risk | None
    risk_override_reason: str | None
    implementation_plan: str | None
    backout_plan: str | None
    test_plan: str | None
    configuration_items: list[str]
    planned_start: datetime | None
    planned_end: datetime | None
    actual_start: datetime | None
    actual_end: datetime | None
    incident_ids: list[uuid.UUID]
    problem_ids: list[uuid.UUID]
    assignment_group: str | None
    assignee_id: uuid.UUID | None
    requested_by: uuid.UUID
    close_code: str | None
    close_notes: str | None
    standard_template_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    version: int


class ApprovalCreate(RequestBody):
    decision: Decision
    comment: str | None = Field(default=None, max_length=10_000)


class ApprovalRead(BaseModel):
    id: uuid.UUID
    change_id: uuid.UUID
    round: int
    approver_id: uuid.UUID
    decision: str
    comment: str | None
    risk: str | None
    created_at: datetime


class NoteCreate(RequestBody):
    body: str = Field(min_length=1, max_length=100_000)


class NoteRead(BaseModel):
    id: uuid.UUID
    change_id: uuid.UUID
    author_id: uuid.UUID
    body: str
    created_at: datetime


class ConflictRead(BaseModel):
    kind: str
    change_id: uuid.UUID | None = None
    number: str | None = None
    title: str | None = None
    status: str | None = None
    blackout_window_id: uuid.UUID | None = None
    name: str | None = None
    start: datetime
    end: datetime
    configuration_items: list[str]
    blocking: bool


class ConflictsRead(BaseModel):
    change_id: uuid.UUID
    planned_start: datetime | None
    planned_end: datetime | None
    configuration_items: list[str]
    conflicts: list[ConflictRead]


class NextSlotRead(BaseModel):
    change_id: uuid.UUID
    duration_seconds: float
    after: datetime
    searched_until: datetime
    start: datetime | None
    end: datetime | None


# ---------------------------------------------------------------- blackout windows

BLACKOUT_READ_ONLY = frozenset({"id", "created_by", "created_at", "updated_at", "version"})


class _BlackoutBody(RequestBody):
    read_only = BLACKOUT_READ_ONLY


class BlackoutWindowCreate(_BlackoutBody):
    """`start` and `end` are wall-clock times in `timezone`: naive ones are read there, offset-bearing ones are
    converted to it. With an `rrule`, each occurrence keeps those wall-clock times."""

    name: str = Field(min_length=1, max_length=200)
    description: Text | None = None
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    start: Time
    end: Time
    rrule: str | None = Field(default=None, min_length=1, max_length=500)
    configuration_items: ConfigurationItems = Field(default_factory=list)


class BlackoutWindowUpdate(_BlackoutBody):
    not_null = frozenset({"name", "timezone", "start", "end", "configuration_items"})
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: Text | None = None
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    start: Time | None = None
    end: Time | None = None
    rrule: str | None = Field(default=None, min_length=1, max_length=500)
    configuration_items: ConfigurationItems | None = None


class BlackoutWindowRead(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    timezone: str
    start: datetime  # the first occurrence, with its offset
    end: datetime
    rrule: str | None
    recurring: bool
    configuration_items: list[str]
    created_by: uuid.UUID
    created_at: datetime
    updated_at: datetime
    version: int


# ---------------------------------------------------------------- calendar


class CalendarChange(BaseModel):
    id: uuid.UUID
    number: str
    title: str
    type: str
    status: str
    risk: str | None
    planned_start: datetime
    planned_end: datetime
    configuration_items: list[str]
    version: int


class CalendarBlackout(BaseModel):
    id: uuid.UUID
    name: str
    start: datetime
    end: datetime
    timezone: str
    recurring: bool
    configuration_items: list[str]


class CalendarRead(BaseModel):
    start: datetime
    end: datetime
    changes: list[CalendarChange]
    blackout_windows: list[CalendarBlackout]


class ApprovalResult(ApprovalRead):
    """A recorded decision and the RFC after it (approved, scheduled, or returned to new)."""

    change: ChangeRead


# ---------------------------------------------------------------- standard-change templates

TEMPLATE_READ_ONLY = frozenset({"id", "risk", "created_by", "created_at", "updated_at", "version"})


class _TemplateBody(RequestBody):
    read_only = TEMPLATE_READ_ONLY


class TemplateCreate(_TemplateBody):
    """A pre-approved, low-risk change: the plans every change raised from it follows, and the configuration
    items it may touch (none: any)."""

    name: str = Field(min_length=1, max_length=200)
    description: Text | None = None
    category: str | None = Field(default=None, min_length=1, max_length=100)
    implementation_plan: str = Field(min_length=1, max_length=100_000)
    backout_plan: str = Field(min_length=1, max_length=100_000)
    test_plan: Text | None = None
    configuration_items: ConfigurationItems = Field(default_factory=list)
    active: StrictBool = True


class TemplateUpdate(_TemplateBody):
    not_null = frozenset({"name", "implementation_plan", "backout_plan", "active", "configuration_items"})
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: Text | None = None
    category: str | None = Field(default=None, min_length=1, max_length=100)
    implementation_plan: str | None = Field(default=None, min_length=1, max_length=100_000)
    backout_plan: str | None = Field(default=None, min_length=1, max_length=100_000)
    test_plan: Text | None = None
    configuration_items: ConfigurationItems | None = None
    active: StrictBool | None = None


class TemplateRead(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    category: str | None
    implementation_plan: str
    backout_plan: str
    test_plan: str | None
    configuration_items: list[str]
    active: bool
    risk: Risk = Risk.LOW  # a standard change is low risk
    created_by: uuid.UUID
    created_at: datetime
    updated_at: datetime
    version: int
