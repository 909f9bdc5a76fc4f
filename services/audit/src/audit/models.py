"""The audit log: one row per event, chained by hash; the anchors that sign it (a key the database does not hold,
`audit.anchors`); and the checkpoints of past verifications.

All three tables are append-only: the service's role may SELECT and INSERT them, nothing else (granted in the
migration), and triggers refuse UPDATE, DELETE and TRUNCATE to every role short of one that switches triggers
off. Deliberately no shared outbox/inbox tables here: the audit service emits no events of its own (it publishes
only what it parks and what an admin replays, both outside any transaction of its own) and needs no inbox, its
own table is the record of what it has seen."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

HASH_LENGTH = 64  # hex SHA-256


def _text(*, nullable: bool, collation: str | None = None) -> Any:
    return Column(Text(collation=collation), nullable=nullable)


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"
    __table_args__ = (
        # Filters answer newest first along seq; "C" collation lets a type prefix (`incident.*`) use the index.
        Index("ix_audit_event_type_seq", "type", "seq"),
        Index("ix_audit_event_subject_seq", "subject", "seq"),
        Index("ix_audit_event_actor_seq", "actor", "seq"),
        Index("ix_audit_event_correlation_seq", "correlation_id", "seq"),
        Index("ix_audit_event_received_at", "received_at"),
    )

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    event_id: uuid.UUID = Field(sa_column_kwargs={"unique": True, "nullable": False})
    type: str = Field(sa_column=_text(nullable=False, collation="C"))
    source: str = Field(sa_column=_text(nullable=False))
    subject: str | None = Field(default=None, sa_column=_text(nullable=True))
    actor: str | None = Field(default=None, sa_column=_text(nullable=True))
    correlation_id: str | None = Field(default=None, sa_column=_text(nullable=True))
    time: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    event: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    prev_hash: str = Field(sa_column=Column(String(HASH_LENGTH), nullable=False))
    hash: str = Field(sa_column=Column(String(HASH_LENGTH), nullable=False))


class AuditCheckpoint(SQLModel, table=True):
    """A verified prefix of the chain: every record up to `seq` checked out, and `seq` carried `hash`."""

    __tablename__ = "audit_checkpoint"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: str = Field(sa_column=Column(String(HASH_LENGTH), nullable=False))
    verified_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )


class AuditAnchor(SQLModel, table=True):
    """One batch as the writer appended it: records `from_seq`..`seq`, and the Ed25519 signature (key `kid`) of
    `itsm-audit-anchor:<from_seq>:<seq>:<hash of record seq>` (`audit.anchors`)."""

    __tablename__ = "audit_anchor"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    from_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    kid: str = Field(sa_column=Column(String(16), nullable=False))
    signature: str = Field(sa_column=Column(Text, nullable=False))
