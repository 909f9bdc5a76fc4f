from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from itsm_shared.auth import Role
from itsm_shared.schemas import RequestBody
from pydantic import BaseModel, Field, StrictBool, StringConstraints, field_validator

from auth.config import MAX_PASSWORD, MIN_PASSWORD

# Bounds of the token and revoke forms (CONTRACT §3): longer is 422 before any use case runs.
MAX_USERNAME = 64
MAX_CLIENT_ID = 64
MAX_SECRET = 256  # client secrets and refresh tokens are 43 characters
MAX_TOKEN = 4096  # /revoke takes refresh tokens, or an access token (a JWT of about 700 characters)
MAX_SCOPE = 1024
MAX_GRANT_TYPE = 64
# An Authorization header of HTTP Basic client credentials: the client_id and secret above, form-urlencoded, base64.
MAX_AUTHORIZATION = 2048

Username = Annotated[str, StringConstraints(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
Password = Annotated[str, Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]


def _check_roles(roles: list[str]) -> list[str]:
    unknown = sorted(set(roles) - Role.ALL)
    if unknown:
        raise ValueError(f"unknown roles: {', '.join(unknown)}; known: {', '.join(sorted(Role.ALL))}")
    return sorted(set(roles))


# A role's name; any other is 422 (_check_roles), the schema lists them.
RoleName = Annotated[str, Field(json_schema_extra={"enum": sorted(Role.ALL)})]


class Strict(RequestBody):
    """The request bodies of the auth service (RequestBody: unknown fields, null where not allowed, U+0000)."""


class UserCreate(Strict):
    username: Username
    password: Password
    full_name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    roles: list[RoleName] = Field(default_factory=lambda: [Role.REQUESTER])
    active: StrictBool = True

    _roles = field_validator("roles")(_check_roles)


class UserUpdate(Strict):
    full_name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    roles: list[RoleName] | None = None
    active: StrictBool | None = None
    password: Password | None = None

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_roles(value)


class UserRead(BaseModel):
    id: uuid.UUID
    username: str
    full_name: str | None
    email: str | None
    roles: list[str]
    active: bool
    # Failed logins currently delay some client address before this account's password is even checked.
    locked: bool = False
    created_at: datetime | None
    updated_at: datetime | None
    version: int


class ClientCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    roles: list[RoleName] = Field(default_factory=list)

    _roles = field_validator("roles")(_check_roles)


class ClientUpdate(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    roles: list[RoleName] | None = None
    active: StrictBool | None = None

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_roles(value)


class ClientRead(BaseModel):
    id: uuid.UUID
    client_id: str
    name: str
    roles: list[str]
    active: bool
    created_at: datetime | None
    updated_at: datetime | None = None
    version: int = 1


class ClientCreated(ClientRead):
    client_secret: str = Field(description="shown once; store it now")


class TokenRequest(BaseModel):
    """The form of `POST /token` (RFC 6749 §4.3, §4.4, §6); which fields a grant needs is the service's rule."""

    grant_type: str
    username: str | None = None
    password: str | None = None
    refresh_token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    # The Authorization header as sent: client authentication by HTTP Basic (RFC 6749 §2.3.1).
    authorization: str | None = None


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105
    expires_in: int
    refresh_token: str | None = None
    scope: str | None = None


class Me(BaseModel):
    id: uuid.UUID
    kind: str
    username: str | None = None
    full_name: str | None = None
    email: str | None = None
    roles: list[str]


class SigningKeyRead(BaseModel):
    kid: str
    created_at: datetime | None
    retire_at: datetime | None
    signing: bool


class ServerMetadata(BaseModel):
    """RFC 8414 authorization server metadata (`/.well-known/oauth-authorization-server`)."""

    issuer: str = Field(description="the `iss` of every access token (ITSM_JWT_ISSUER)")
    token_endpoint: str
    revocation_endpoint: str
    jwks_uri: str
    grant_types_supported: list[str]
    # No authorization endpoint, hence no response type (REQUIRED by RFC 8414, so present, and empty).
    response_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    access_token_signing_alg_values_supported: list[str] = Field(
        description="the JWS algorithms of the access tokens (an extension: RFC 8414 registers none for them)"
    )
    service_documentation: str
