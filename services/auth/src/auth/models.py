from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from itsm_shared.models import IdempotencyRecord, InboxMessage, OutboxMessage, utc_column
from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel

__all__ = [
    "IdempotencyRecord",
    "InboxMessage",
    "LoginThrottle",
    "OutboxMessage",
    "RefreshToken",
    "RevokedSubject",
    "ServiceClient",
    "SigningKey",
    "User",
]


def roles_column() -> Any:
    return Column(ARRAY(String(32)), nullable=False, server_default="{}")


class User(SQLModel, table=True):
    __tablename__ = "user_account"
    __table_args__ = (Index("ix_user_account_username", "username", unique=True),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    username: str = Field(sa_column=Column(String(64), nullable=False))
    full_name: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    email: str | None = Field(default=None, sa_column=Column(String(320), nullable=True))
    password_hash: str = Field(sa_column=Column(Text, nullable=False))
    roles: list[str] = Field(default_factory=list, sa_column=roles_column())
    active: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default="true"))
    created_at: datetime | None = Field(default=None, sa_column=utc_column())
    updated_at: datetime | None = Field(default=None, sa_column=utc_column())
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))


class ServiceClient(SQLModel, table=True):
    """A service account for another system (client_credentials grant)."""

    __tablename__ = "service_client"
    __table_args__ = (Index("ix_service_client_client_id", "client_id", unique=True),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    client_id: str = Field(sa_column=Column(String(64), nullable=False))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    secret_hash: str = Field(sa_column=Column(Text, nullable=False))
    roles: list[str] = Field(default_factory=list, sa_column=roles_column())
    active: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default="true"))
    created_at: datetime | None = Field(default=None, sa_column=utc_column())
    updated_at: datetime | None = Field(default=None, sa_column=utc_column())
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))


class RefreshToken(SQLModel, table=True):
    __tablename__ = "refresh_token"
    __table_args__ = (
        Index("ix_refresh_token_hash", "token_hash", unique=True),
        Index("ix_refresh_token_family", "family_id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    token_hash: str = Field(sa_column=Column(String(64), nullable=False))
    family_id: uuid.UUID
    user_id: uuid.UUID = Field(foreign_key="user_account.id")
    issued_at: datetime | None = Field(default=None, sa_column=utc_column())
    expires_at: datetime = Field(sa_column=utc_column(default_now=False))
    family_expires_at: datetime = Field(sa_column=utc_column(default_now=False))
    used_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    revoked_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))


class SigningKey(SQLModel, table=True):
    """Ed25519 keys. The newest unretired key signs; every key not past its `retire_at` is published in the JWKS;
    a retired key's row is deleted once no token it signed can still be valid. The private key is kept encrypted
    under the key-encryption key (security.KeyEncryption); `private_pem` is only ever set on rows written before
    that, and the service encrypts such a row (and clears it) when it starts."""

    __tablename__ = "signing_key"

    kid: str = Field(sa_column=Column(String(64), primary_key=True))
    private_pem: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    private_key_encrypted: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    public_jwk: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=utc_column())
    retire_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))


class LoginThrottle(SQLModel, table=True):
    """Consecutive failed logins of one account name from one client address (CONTRACT §3). `account_key` is the
    keyed hash of the name as typed (security.username_key), the same for names that are no account."""

    __tablename__ = "login_throttle"
    __table_args__ = (Index("ix_login_throttle_last_failure_at", "last_failure_at"),)

    account_key: str = Field(sa_column=Column(String(64), primary_key=True))
    client_address: str = Field(sa_column=Column(String(64), primary_key=True))
    failures: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    blocked_until: datetime | None = Field(default=None, sa_column=utc_column(nullable=True, default_now=False))
    last_failure_at: datetime | None = Field(default=None, sa_column=utc_column())


class RevokedSubject(SQLModel, table=True):
    """A client or user whose access tokens issued before `not_before` (unix seconds) every service refuses
    (auth.revocations); no foreign key, so a deleted client's row stays until no token it held can be valid."""

    __tablename__ = "revoked_subject"
    __table_args__ = (Index("ix_revoked_subject_not_before", "not_before"),)

    subject: uuid.UUID = Field(primary_key=True)
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    not_before: int = Field(sa_column=Column(BigInteger, nullable=False))
