from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from itsm_shared.models import IdempotencyRecord, InboxMessage, OutboxMessage, string_column, utc_column
from itsm_shared.records import HistoryRow, Records
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSTZRANGE
from sqlmodel import Field, SQLModel

__all__ = ["IdempotencyRecord", "InboxMessage", "OutboxMessage"]


class ChangeType(StrEnum):
    STANDARD = "standard"
    NORMAL = "normal"
    EMERGENCY = "emergency"


class Status(StrEnum):
    NEW = "new"
    ASSESS = "assess"
    AUTHORIZE = "authorize"
    SCHEDULED = "scheduled"
    IMPLEMENT = "implement"
    REVIEW = "review"
    CLOSED = "closed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({Status.CLOSED, Status.CANCELLED})

# A change in one of these holds its configuration items for its planned window: others may not overlap it.
OCCUPYING_STATUSES = (Status.SCHEDULED, Status.IMPLEMENT)
# The same as SQL, written out with literals so the planner matches it to the partial GiST index below
# (a bound-parameter IN list cannot be proven to imply an index predicate).
OCCUPYING_SQL = "status IN ('scheduled', 'implement')"


class Risk(StrEnum):
    LOW = "low"
    MODERATE = "moderate"
    HIGH = "high"


class Approval(StrEnum):
    NOT_REQUIRED = "not_required"  # standard changes are pre-approved
    NOT_REQUESTED = "not_requested"
    REQUESTED = "requested"
    APPROVED = "approved"
    REJECTED = "rejected"


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class CloseCode(StrEnum):
    SUCCESSFUL = "successful"
    SUCCESSFUL_WITH_ISSUES = "successful_with_issues"
    UNSUCCESSFUL = "unsuccessful"


def _text_array() -> Any:
    # text[] (not varchar[]): a text[] parameter then meets the column without a cast, so the GIN index applies.
    return Column(ARRAY(Text), nullable=False, server_default="{}")


def _uuid_array() -> Any:
    return Column(ARRAY(Uuid), nullable=False, server_default="{}")


class ChangeRequest(SQLModel, table=True):
    __tablename__ = "change_request"
    # Server defaults (the number) and the computed window come back with the INSERT or UPDATE, not with a
    # second query.
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        CheckConstraint("planned_end > planned_start", name="ck_change_request_planned_order"),
        CheckConstraint("actual_end >= actual_start", name="ck_change_request_actual_order"),
        Index("ix_change_request_number", "number", unique=True),
        Index("ix_change_request_created", "created_at", "id"),
        Index("ix_change_request_updated", "updated_at", "id"),
        Index("ix_change_request_status_created", "status", "created_at", "id"),
        Index("ix_change_request_requested_by", "requested_by", "created_at", "id"),
        Index("ix_change_request_assignee", "assignee_id", "created_at", "id"),
        # The scheduling conflict check: changes that hold their window, found by range overlap (GiST) and
        # shared configuration items (GIN), never by a scan.
        Index(
            "ix_change_request_occupied_window",
            "planned_window",
            postgresql_using="gist",
            postgresql_where=text(OCCUPYING_SQL),
        ),
        Index("ix_change_request_window", "planned_window", postgresql_using="gist"),
        Index("ix_change_request_cis", "configuration_items", postgresql_using="gin"),
        Index("ix_change_request_incidents", "incident_ids", postgresql_using="gin"),
        Index("ix_change_request_problems", "problem_ids", postgresql_using="gin"),
        Index("ix_change_request_template", "standard_template_id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    number: str | None = Field(
        default=None,
        sa_column=Column(
            String(16),
            nullable=False,
            server_default=text("'CHG' || lpad(nextval('change_number_seq')::text, 7, '0')"),
        ),
    )
    type: str = Field(sa_column=string_column(20, nullable=False))
    title: str = Field(sa_column=string_column(200, nullable=False))
    description: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    status: str = Field(default=Status.NEW, sa_column=string_column(20, nullable=False))
    approval: str = Field(default=Approval.NOT_REQUESTED, sa_column=string_column(20, nullable=False))
    # Each entry into authorize opens a new round; only the decisions of the current round count.
    approval_round: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    risk: str | None = Field(default=None, sa_column=string_column(10))
    computed_risk: str | None = Field(default=None, sa_column=string_column(10))
    risk_assessment: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    risk_override: str | None = Field(default=None, sa_column=string_column(10))
    risk_override_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    implementation_plan: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    backout_plan: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    test_plan: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    justification: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    configuration_items: list[str] = Field(default_factory=list, sa_column=_text_array())
    planned_start: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    planned_end: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    planned_window: Any = Field(
        default=None,
        sa_column=Column(
            TSTZRANGE,
            Computed(
                "CASE WHEN planned_start IS NOT NULL AND planned_end IS NOT NULL "
                "THEN tstzrange(planned_start, planned_end, '[)') END",
                persisted=True,
            ),
        ),
        exclude=True,
    )
    actual_start: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    actual_end: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    incident_ids: list[uuid.UUID] = Field(default_factory=list, sa_column=_uuid_array())
    problem_ids: list[uuid.UUID] = Field(default_factory=list, sa_column=_uuid_array())
    assignment_group: str | None = Field(default=None, sa_column=string_column(100))
    assignee_id: uuid.UUID | None = None
    requested_by: uuid.UUID
    close_code: str | None = Field(default=None, sa_column=string_column(30))
    close_notes: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The standard-change template a standard change was raised from (None: by a change manager, or not standard).
    standard_template_id: uuid.UUID | None = Field(
        default=None, sa_column=Column(ForeignKey("standard_change_template.id"), nullable=True)
    )
    created_at: datetime | None = Field(default=None, sa_column=utc_column())
    updated_at: datetime | None = Field(default=None, sa_column=utc_column())
    closed_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))


class ChangeApproval(SQLModel, table=True):
    """One CAB decision. A person decides at most once per round."""

    __tablename__ = "change_approval"
    __table_args__ = (
        Index("ix_change_approval_change", "change_id", "created_at", "id"),
        Index("ux_change_approval_round_approver", "change_id", "round", "approver_id", unique=True),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    change_id: uuid.UUID = Field(sa_column=Column(ForeignKey("change_request.id"), nullable=False))
    round: int = Field(sa_column=Column(Integer, nullable=False))
    approver_id: uuid.UUID
    decision: str = Field(sa_column=string_column(10, nullable=False))
    comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    risk: str | None = Field(default=None, sa_column=string_column(10))
    created_at: datetime | None = Field(default=None, sa_column=utc_column())


class ChangeNote(SQLModel, table=True):
    __tablename__ = "change_note"
    __table_args__ = (Index("ix_change_note_change", "change_id", "created_at", "id"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    change_id: uuid.UUID = Field(sa_column=Column(ForeignKey("change_request.id"), nullable=False))
    author_id: uuid.UUID
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=utc_column())


class ChangeHistory(HistoryRow, table=True):
    __tablename__ = "change_history"
    __table_args__ = (Index("ix_change_history_change", "change_id", "id"),)
    owner = "change_id"

    change_id: uuid.UUID = Field(sa_column=Column(ForeignKey("change_request.id"), nullable=False))


class BlackoutWindow(SQLModel, table=True):
    """A period no change may be scheduled into (emergency changes excepted). `start` and `end` are wall-clock
    times in `timezone`; with an `rrule` (RFC 5545 RRULE) each occurrence keeps those wall-clock times, so
    "Friday 18:00 to Monday 06:00 Europe/Berlin" stays that across daylight-saving changes. An empty
    `configuration_items` applies to every change; otherwise only to changes touching one of them."""

    __tablename__ = "blackout_window"
    __table_args__ = (
        CheckConstraint("ends_at > starts_at", name="ck_blackout_window_order"),
        Index("ix_blackout_window_created", "created_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(sa_column=string_column(200, nullable=False))
    description: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    timezone: str = Field(sa_column=string_column(64, nullable=False))
    starts_at: datetime = Field(sa_column=Column(DateTime(timezone=False), nullable=False))
    ends_at: datetime = Field(sa_column=Column(DateTime(timezone=False), nullable=False))
    rrule: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    configuration_items: list[str] = Field(default_factory=list, sa_column=_text_array())
    created_by: uuid.UUID
    created_at: datetime | None = Field(default=None, sa_column=utc_column())
    updated_at: datetime | None = Field(default=None, sa_column=utc_column())
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))


class StandardChangeTemplate(SQLModel, table=True):
    """One entry of the standard-change catalogue: a low-risk change pre-approved by change management, with the
    plans every change raised from it follows and the configuration items it may touch (none listed: any)."""

    __tablename__ = "standard_change_template"
    __table_args__ = (Index("ix_standard_change_template_created", "created_at", "id"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(sa_column=string_column(200, nullable=False))
    description: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    category: str | None = Field(default=None, sa_column=string_column(100))
    implementation_plan: str = Field(sa_column=Column(Text, nullable=False))
    backout_plan: str = Field(sa_column=Column(Text, nullable=False))
    test_plan: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    configuration_items: list[str] = Field(default_factory=list, sa_column=_text_array())
    active: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default="true"))
    created_by: uuid.UUID
    created_at: datetime | None = Field(default=None, sa_column=utc_column())
    updated_at: datetime | None = Field(default=None, sa_column=utc_column())
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))


# The one write path of RFCs (itsm_shared.records): load by id or number, and version, history and events.
CHANGES = Records(service="change", entity="change", model=ChangeRequest, history_table=ChangeHistory, noun="change")
BLACKOUTS = Records(
    service="change", entity="blackout_window", model=BlackoutWindow, history_table=None, noun="blackout window"
)
TEMPLATES = Records(
    service="change",
    entity="standard_change_template",
    model=StandardChangeTemplate,
    history_table=None,
    noun="standard change template",
)
