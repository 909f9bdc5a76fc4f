"""Tables every service carries in its own schema: outbox, inbox, idempotency keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, Index, Integer, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


def utc_column(*, nullable: bool = False, default_now: bool = True) -> Any:
    return Column(
        DateTime(timezone=True),
        nullable=nullable,
        server_default=func.now() if default_now else None,
    )


def string_column(length: int, *, nullable: bool = True, **kw: Any) -> Any:
    return Column(String(length), nullable=nullable, **kw)


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "next_attempt_at", postgresql_where=text("published_at IS NULL")),)

    id: uuid.UUID = Field(primary_key=True)  # the CloudEvent id
    routing_key: str = Field(sa_column=Column(String(200), nullable=False))
    payload: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=utc_column())
    next_attempt_at: datetime | None = Field(default=None, sa_column=utc_column())
    published_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class InboxMessage(SQLModel, table=True):
    __tablename__ = "inbox"

    consumer: str = Field(sa_column=Column(String(200), primary_key=True))
    event_id: uuid.UUID = Field(primary_key=True)
    received_at: datetime | None = Field(default=None, sa_column=utc_column())


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_key"

    principal: str = Field(sa_column=Column(String(200), primary_key=True))
    key: str = Field(sa_column=Column(String(200), primary_key=True))
    request_hash: str = Field(sa_column=Column(String(64), nullable=False))
    status_code: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    body: Any = Field(default=None, sa_column=Column(JSONB, nullable=True))
    created_at: datetime | None = Field(default=None, sa_column=utc_column())
