from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


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


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue: str = Field(min_length=1, max_length=255, description="an existing queue; events go to it directly")
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    type: str | None = Field(default=None, description="an event type, or a prefix such as incident.*")


class ReplayResult(BaseModel):
    queue: str
    published: int
    first_seq: int | None
    last_seq: int | None
