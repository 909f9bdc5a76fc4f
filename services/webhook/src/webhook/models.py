"""Subscriptions, the events consumed (kept for replays), deliveries (one per event and subscription, a row that
survives restarts) and their attempts (the delivery log)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from itsm_shared.models import IdempotencyRecord, InboxMessage, OutboxMessage, string_column, utc_column
from itsm_shared.records import Records
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Field, SQLModel

__all__ = ["IdempotencyRecord", "InboxMessage", "OutboxMessage"]


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # due at next_attempt_at (or claimed until then by a replica sending it)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # every attempt of the schedule failed
    CANCELLED = "cancelled"  # its subscription was disabled or deactivated before it succeeded


def _strings() -> Any:
    return Column(ARRAY(Text), nullable=False, server_default="{}")


class Subscription(SQLModel, table=True):
    __tablename__ = "subscription"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        Index("ix_subscription_created", "created_at", "id"),
        Index("ix_subscription_owner_created", "owner_id", "created_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID  # the principal that created it (an integrator sees only its own)
    url: str = Field(sa_column=Column(Text, nullable=False))
    event_types: list[str] = Field(sa_column=_strings())
    subjects: list[str] | None = Field(default=None, sa_column=Column(ARRAY(Text), nullable=True))
    description: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    active: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default="true"))
    disabled_reason: str | None = Field(default=None, sa_column=string_column(200))
    # Encrypted (signing.SecretBox); the previous secret keeps signing until previous_secret_expires_at.
    secret: str = Field(sa_column=Column(Text, nullable=False))
    previous_secret: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    previous_secret_expires_at: datetime | None = Field(
        default=None, sa_column=utc_column(nullable=True, default_now=False)
    )
    # The first failed attempt since the last success: failing for webhook_disable_after_seconds disables it.
    failing_since: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    created_at: datetime | None = Field(default=None, sa_column=utc_column())
    updated_at: datetime | None = Field(default=None, sa_column=utc_column())
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))


class StoredEvent(SQLModel, table=True):
    """An event as consumed (its bytes are the body of every delivery), kept webhook_retention_days."""

    __tablename__ = "stored_event"
    __table_args__ = (Index("ix_stored_event_received", "received_at"),)

    id: uuid.UUID = Field(primary_key=True)  # the CloudEvent id
    type: str = Field(sa_column=Column(String(200), nullable=False))
    subject: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    received_at: datetime | None = Field(default=None, sa_column=utc_column())


class Delivery(SQLModel, table=True):
    __tablename__ = "delivery"
    __table_args__ = (
        Index("ix_delivery_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        Index("ix_delivery_subscription_created", "subscription_id", "created_at", "id"),
        # One delivery per event and subscription from the consumer; a replay adds others.
        Index(
            "ix_delivery_once",
            "subscription_id",
            "event_id",
            unique=True,
            postgresql_where=text("NOT replay"),
        ),
        Index("ix_delivery_event", "event_id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    subscription_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("subscription.id", ondelete="CASCADE"), nullable=False)
    )
    event_id: uuid.UUID = Field(sa_column=Column(ForeignKey("stored_event.id", ondelete="CASCADE"), nullable=False))
    event_type: str = Field(sa_column=Column(String(200), nullable=False))
    replay: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    status: str = Field(
        default=DeliveryStatus.PENDING, sa_column=string_column(20, nullable=False, server_default="pending")
    )
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    next_attempt_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))
    last_attempt_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    created_at: datetime | None = Field(default=None, sa_column=utc_column())


class DeliveryAttempt(SQLModel, table=True):
    """One HTTP attempt: when, the status code (none after a timeout, connection error or refused address),
    latency, the first KiB of the answer, the error."""

    __tablename__ = "delivery_attempt"
    __table_args__ = (Index("ix_delivery_attempt_delivery", "delivery_id", "id"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    delivery_id: uuid.UUID = Field(sa_column=Column(ForeignKey("delivery.id", ondelete="CASCADE"), nullable=False))
    attempted_at: datetime | None = Field(default=None, sa_column=utc_column())
    status_code: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    latency_ms: int = Field(sa_column=Column(Integer, nullable=False))
    response: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


SUBSCRIPTIONS = Records(
    service="webhook",
    entity="webhook",
    model=Subscription,
    history_table=None,
    noun="webhook subscription",
)
