from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from itsm_shared.schemas import AsDateTime, RequestBody
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

# An event type (`incident.created`, `itsm.incident.created`), a prefix (`incident.*`), or `*`.
TYPE_PATTERN = r"^(?:\*|[a-z_]+(?:\.[a-z_]+)*(?:\.\*)?)$"
TYPE_MATCH = re.compile(TYPE_PATTERN)


def _type_pattern(value: str) -> str:
    if not TYPE_MATCH.match(value):
        raise PydanticCustomError("type_pattern", "an event type, or a prefix ending in .* (incident.*)")
    return value


TypePattern = Annotated[
    str,
    StringConstraints(strip_whitespace=True),
    AfterValidator(_type_pattern),
    WithJsonSchema({"type": "string", "pattern": TYPE_PATTERN}),
]
SortOrder = Literal["-seq", "seq", "+seq"]


def _after_since(until: datetime | None, info: ValidationInfo) -> datetime | None:
    since = info.data.get("since")
    if until is not None and since is not None and since >= until:
        raise PydanticCustomError("time_range", "must be after since")
    return until


# `since` (inclusive) and `until` (exclusive) bound `received_at`; declared after `since`, so it sees it.
Since = Annotated[AwareDatetime | None, AsDateTime]
Until = Annotated[AwareDatetime | None, AsDateTime, AfterValidator(_after_since)]


class TimeRange(BaseModel):
    since: Since = None
    until: Until = None


class EventFilter(BaseModel):
    """The list's filters, combined with AND."""

    type: TypePattern | None = None
    subject: str | None = None
    actor: str | None = None
    correlation_id: str | None = None
    since: Since = None
    until: Until = None


class AuditRecord(BaseModel):
    """One record of the log: the whole CloudEvent as it arrived (extension attributes included), plus the
    log's `seq`, `received_at`, `hash` and the `prev_hash` it chains to."""

    model_config = ConfigDict(extra="allow")

    seq: int
    received_at: str = Field(description="UTC, always six fractional digits: the exact form the hash covers")
    hash: str
    prev_hash: str
    specversion: str
    id: str
    source: str
    type: str
    subject: str | None = None
    time: str
    datacontenttype: str | None = None
    data: Any = None
    actorid: str | None = None
    correlationid: str | None = None
    sequence: int | None = None


class VerifyResult(BaseModel):
    ok: bool
    checked: int = Field(description="records re-hashed by this walk")
    first_bad_seq: int | None
    from_seq: int = Field(description="where the walk started: 1, or the record after the last checkpoint")
    last_seq: int = Field(description="the newest record when the walk started")
    full: bool
    reason: str | None = None


# A consumer queue as the table of services names it (deploy/services.toml): `<service>.<purpose>`, ASCII.
QUEUE_PATTERN = r"^[a-z][a-z0-9]*\.[a-z0-9-]+$"


class ReplayRequest(RequestBody):
    queue: str = Field(
        min_length=3,
        max_length=200,
        pattern=QUEUE_PATTERN,
        description="one of the services' consumer queues (deploy/services.toml, e.g. problem.incidents), without "
        "ITSM_QUEUE_PREFIX; events go to it directly",
    )
    since: Since = None
    until: Until = None
    type: TypePattern | None = Field(default=None, description="an event type, or a prefix such as incident.*")


class AnchorKeyRead(BaseModel):
    """A public key that verifies anchors: pin it outside the system to check exports on your own."""

    kid: str = Field(description="the first 16 hex digits of SHA-256 of the raw public key")
    public_key: str = Field(description="the raw 32-byte Ed25519 public key, URL-safe base64 without padding")
    current: bool = Field(description="whether it signs new anchors (the others signed earlier ones)")


class ReplayResult(BaseModel):
    queue: str
    published: int
    first_seq: int | None
    last_seq: int | None
