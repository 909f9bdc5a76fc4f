from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from itsm_shared.contracts import ProblemIncidentLinkData, ProblemResolvedData
from itsm_shared.models import IdempotencyRecord, InboxMessage, OutboxMessage, string_column, utc_column
from itsm_shared.records import HistoryRow, Records
from sqlalchemy import BigInteger, Boolean, Column, Computed, Index, Integer, SmallInteger, String, Text, text
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlmodel import Field, SQLModel

__all__ = ["IdempotencyRecord", "InboxMessage", "OutboxMessage"]


class Status(StrEnum):
    NEW = "new"
    ASSESSED = "assessed"
    ROOT_CAUSE_ANALYSIS = "root_cause_analysis"
    FIX_IN_PROGRESS = "fix_in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"
    CANCELLED = "cancelled"


OPEN_STATUSES = frozenset({Status.NEW, Status.ASSESSED, Status.ROOT_CAUSE_ANALYSIS, Status.FIX_IN_PROGRESS})


class ResolutionCode(StrEnum):
    FIX_APPLIED = "fix_applied"
    RISK_ACCEPTED = "risk_accepted"
    DUPLICATE = "duplicate"
    CANNOT_REPRODUCE = "cannot_reproduce"


def _text() -> Any:
    return Column(Text, nullable=True)


class Problem(SQLModel, table=True):
    __tablename__ = "problem"
    # Server defaults (number, timestamps, version) come back with the INSERT, not with a second query.
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        Index("ix_problem_number", "number", unique=True),
        Index("ix_problem_created", "created_at", "id"),
        Index("ix_problem_status_created", "status", "created_at", "id"),
        Index("ix_problem_search", "search", postgresql_using="gin"),
        Index(
            "ix_problem_known_error_match",
            "configuration_item",
            "category",
            postgresql_where=text(
                "known_error AND status IN ('new', 'assessed', 'root_cause_analysis', 'fix_in_progress')"
            ),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    number: str | None = Field(
        default=None,
        sa_column=Column(
            String(16),
            nullable=False,
            server_default=text("'PRB' || lpad(nextval('problem_number_seq')::text, 7, '0')"),
        ),
    )
    title: str = Field(sa_column=string_column(200, nullable=False))
    description: str | None = Field(default=None, sa_column=_text())
    status: str = Field(default=Status.NEW, sa_column=string_column(30, nullable=False))
    impact: int = Field(sa_column=Column(SmallInteger, nullable=False))
    urgency: int = Field(sa_column=Column(SmallInteger, nullable=False))
    priority: int = Field(sa_column=Column(SmallInteger, nullable=False))
    category: str | None = Field(default=None, sa_column=string_column(100))
    configuration_item: str | None = Field(default=None, sa_column=string_column(200))
    assignment_group: str | None = Field(default=None, sa_column=string_column(100))
    assignee_id: uuid.UUID | None = None
    symptoms: str | None = Field(default=None, sa_column=_text())
    root_cause: str | None = Field(default=None, sa_column=_text())
    workaround: str | None = Field(default=None, sa_column=_text())
    fix: str | None = Field(default=None, sa_column=_text())
    resolution_code: str | None = Field(default=None, sa_column=string_column(30))
    known_error: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    known_error_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    change_id: uuid.UUID | None = None
    created_by: uuid.UUID
    created_at: datetime | None = Field(default=None, sa_column=utc_column())
    updated_at: datetime | None = Field(default=None, sa_column=utc_column())
    resolved_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    closed_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    search: Any = Field(
        default=None,
        sa_column=Column(
            TSVECTOR,
            Computed(
                "to_tsvector('english', coalesce(title, '') || ' ' || coalesce(symptoms, '') || ' ' || "
                "coalesce(root_cause, '') || ' ' || coalesce(workaround, ''))",
                persisted=True,
            ),
        ),
        exclude=True,
    )


class ProblemNote(SQLModel, table=True):
    __tablename__ = "problem_note"
    __table_args__ = (Index("ix_problem_note_problem", "problem_id", "created_at", "id"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    problem_id: uuid.UUID = Field(foreign_key="problem.id")
    author_id: uuid.UUID
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=utc_column())


class ProblemHistory(HistoryRow, table=True):
    __tablename__ = "problem_history"
    __table_args__ = (Index("ix_problem_history_problem", "problem_id", "id"),)
    owner = "problem_id"

    problem_id: uuid.UUID = Field(foreign_key="problem.id")


class ProblemIncident(SQLModel, table=True):
    """A link. An incident belongs to at most one problem at a time (it has one problem_id)."""

    __tablename__ = "problem_incident"
    __table_args__ = (Index("ix_problem_incident_incident", "incident_id", unique=True),)

    problem_id: uuid.UUID = Field(foreign_key="problem.id", primary_key=True)
    incident_id: uuid.UUID = Field(primary_key=True)
    automatic: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    linked_by: str = Field(sa_column=string_column(64, nullable=False))
    linked_at: datetime | None = Field(default=None, sa_column=utc_column())


class IncidentRef(SQLModel, table=True):
    """The incidents this service knows, from `incident.*` events (never from the incident service's API)."""

    __tablename__ = "incident_ref"

    id: uuid.UUID = Field(primary_key=True)
    number: str | None = Field(default=None, sa_column=string_column(16))
    title: str | None = Field(default=None, sa_column=string_column(200))
    status: str | None = Field(default=None, sa_column=string_column(20))
    priority: int | None = Field(default=None, sa_column=Column(SmallInteger, nullable=True))
    category: str | None = Field(default=None, sa_column=string_column(100))
    configuration_item: str | None = Field(default=None, sa_column=string_column(200))
    caller_id: uuid.UUID | None = None
    deleted: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    sequence: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime | None = Field(default=None, sa_column=utc_column())


PROBLEMS = Records(
    service="problem",
    entity="problem",
    model=Problem,
    history_table=ProblemHistory,
    noun="problem",
    contracts={
        "incident_linked": ProblemIncidentLinkData,
        "incident_unlinked": ProblemIncidentLinkData,
        "resolved": ProblemResolvedData,
    },
)
