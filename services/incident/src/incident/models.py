from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from itsm_shared.models import IdempotencyRecord, InboxMessage, OutboxMessage, string_column, utc_column
from itsm_shared.records import HistoryRow, Records
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlmodel import Field, SQLModel

__all__ = ["IdempotencyRecord", "InboxMessage", "OutboxMessage"]


class Status(StrEnum):
    NEW = "new"
    IN_PROGRESS = "in_progress"
    ON_HOLD = "on_hold"
    RESOLVED = "resolved"
    CLOSED = "closed"
    CANCELLED = "cancelled"


OPEN_STATUSES = frozenset({Status.NEW, Status.IN_PROGRESS, Status.ON_HOLD})


class HoldReason(StrEnum):
    AWAITING_CALLER = "awaiting_caller"
    AWAITING_CHANGE = "awaiting_change"
    AWAITING_PROBLEM = "awaiting_problem"
    AWAITING_VENDOR = "awaiting_vendor"


class Visibility(StrEnum):
    INTERNAL = "internal"
    PUBLIC = "public"


class ClockKind(StrEnum):
    RESPONSE = "response"
    RESOLUTION = "resolution"


class RequesterMode(StrEnum):
    """What becomes of the impact and urgency a requester gives (issue #11, point 16)."""

    ACCEPT = "accept"  # taken as given
    CAP = "cap"  # taken up to the policy's highest priority
    IGNORE = "ignore"  # replaced by 3 and 3 (P5) until an agent triages


class ClockState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class Incident(SQLModel, table=True):
    __tablename__ = "incident"
    # Server defaults (number, timestamps, version) come back with the INSERT, not with a second query.
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        Index("ix_incident_number", "number", unique=True),
        Index("ix_incident_created", "created_at", "id"),
        Index("ix_incident_status_created", "status", "created_at", "id"),
        Index("ix_incident_priority_created", "priority", "created_at", "id"),
        Index("ix_incident_caller_created", "caller_id", "created_at", "id"),
        Index("ix_incident_assignee_created", "assignee_id", "created_at", "id"),
        Index("ix_incident_group_created", "assignment_group", "created_at", "id"),
        Index("ix_incident_problem", "problem_id"),
        Index("ix_incident_parent", "parent_id"),
        Index("ix_incident_search", "search", postgresql_using="gin"),
        Index("ix_incident_autoclose", "resolved_at", postgresql_where=text("status = 'resolved'")),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    number: str | None = Field(
        default=None,
        sa_column=Column(
            String(16),
            nullable=False,
            server_default=text("'INC' || lpad(nextval('incident_number_seq')::text, 7, '0')"),
        ),
    )
    title: str = Field(sa_column=string_column(200, nullable=False))
    description: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    caller_id: uuid.UUID
    category: str | None = Field(default=None, sa_column=string_column(100))
    configuration_item: str | None = Field(default=None, sa_column=string_column(200))
    impact: int = Field(sa_column=Column(SmallInteger, nullable=False))
    urgency: int = Field(sa_column=Column(SmallInteger, nullable=False))
    priority: int = Field(sa_column=Column(SmallInteger, nullable=False))
    status: str = Field(default=Status.NEW, sa_column=string_column(20, nullable=False))
    hold_reason: str | None = Field(default=None, sa_column=string_column(30))
    assignment_group: str | None = Field(default=None, sa_column=string_column(100))
    assignee_id: uuid.UUID | None = None
    resolution_code: str | None = Field(default=None, sa_column=string_column(50))
    resolution_notes: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    problem_id: uuid.UUID | None = None
    parent_id: uuid.UUID | None = Field(default=None, sa_column=Column(ForeignKey("incident.id"), nullable=True))
    reopen_count: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    sla_breached: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    created_by: uuid.UUID
    created_at: datetime | None = Field(default=None, sa_column=utc_column())
    updated_at: datetime | None = Field(default=None, sa_column=utc_column())
    resolved_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    closed_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    deleted_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    search: Any = Field(
        default=None,
        sa_column=Column(
            TSVECTOR,
            Computed("to_tsvector('english', coalesce(title, '') || ' ' || coalesce(description, ''))", persisted=True),
        ),
        exclude=True,
    )


class IncidentNote(SQLModel, table=True):
    __tablename__ = "incident_note"
    __table_args__ = (Index("ix_incident_note_incident", "incident_id", "created_at", "id"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    incident_id: uuid.UUID = Field(foreign_key="incident.id")
    author_id: uuid.UUID
    visibility: str = Field(sa_column=string_column(10, nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=utc_column())


class IncidentHistory(HistoryRow, table=True):
    __tablename__ = "incident_history"
    __table_args__ = (Index("ix_incident_history_incident", "incident_id", "id"),)
    owner = "incident_id"

    incident_id: uuid.UUID = Field(foreign_key="incident.id")


class SlaPolicy(SQLModel, table=True):
    __tablename__ = "sla_policy"

    priority: int = Field(sa_column=Column(SmallInteger, primary_key=True, autoincrement=False))
    name: str = Field(sa_column=string_column(100, nullable=False))
    # Minutes, fractions allowed (a 90-second target is 1.5).
    response_minutes: float = Field(sa_column=Column(Float, nullable=False))
    resolution_minutes: float = Field(sa_column=Column(Float, nullable=False))
    calendar: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    updated_at: datetime | None = Field(default=None, sa_column=utc_column())


class RequesterPolicy(SQLModel, table=True):
    """How the impact and urgency of an incident a requester raises are taken: one row, admins change it."""

    __tablename__ = "requester_policy"
    __table_args__ = (
        CheckConstraint("id = 1", name="ck_requester_policy_one_row"),
        CheckConstraint("mode IN ('accept', 'cap', 'ignore')", name="ck_requester_policy_mode"),
        CheckConstraint("highest_priority BETWEEN 1 AND 5", name="ck_requester_policy_highest_priority"),
    )

    id: int = Field(default=1, sa_column=Column(SmallInteger, primary_key=True, autoincrement=False))
    mode: str = Field(sa_column=string_column(10, nullable=False))
    # With mode `cap`: the highest priority (1 is the highest) a requester's impact and urgency can give.
    highest_priority: int = Field(sa_column=Column(SmallInteger, nullable=False))
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    updated_at: datetime | None = Field(default=None, sa_column=utc_column())


class SlaClock(SQLModel, table=True):
    """One SLA target of one incident. Elapsed time is the business time from `started_at` to now (or
    `stopped_at`) less the `pauses` ([from, to] pairs, `to` null while paused), always computed with the
    current calendar: that makes a priority change retroactive from the original start. `next_fire_at` is
    the next moment the scheduler must act (warning or breach); it finds due clocks through its index."""

    __tablename__ = "sla_clock"
    __table_args__ = (
        UniqueConstraint("incident_id", "kind"),
        Index("ix_sla_clock_next_fire", "next_fire_at", postgresql_where=text("next_fire_at IS NOT NULL")),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    incident_id: uuid.UUID = Field(foreign_key="incident.id")
    kind: str = Field(sa_column=string_column(20, nullable=False))
    target_seconds: float = Field(sa_column=Column(Float, nullable=False))
    calendar: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    state: str = Field(default=ClockState.RUNNING, sa_column=string_column(20, nullable=False))
    started_at: datetime = Field(sa_column=utc_column(default_now=False))
    pauses: list[list[str | None]] = Field(
        default_factory=list, sa_column=Column(JSONB, nullable=False, server_default="[]")
    )
    due_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    warning_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    stopped_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    warned: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    breached: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    next_fire_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))


class ProblemLink(SQLModel, table=True):
    """The highest `sequence` applied per (incident, problem), so link/unlink events apply in order."""

    __tablename__ = "problem_link"
    # The highest sequence applied of a problem's links: a new link's sequence is bounded by it.
    __table_args__ = (Index("ix_problem_link_problem_sequence", "problem_id", "sequence"),)

    incident_id: uuid.UUID = Field(primary_key=True)
    problem_id: uuid.UUID = Field(primary_key=True)
    sequence: int = Field(sa_column=Column(BigInteger, nullable=False))
    linked: bool = Field(sa_column=Column(Boolean, nullable=False))


INCIDENTS = Records(
    service="incident", entity="incident", model=Incident, history_table=IncidentHistory, noun="incident"
)
