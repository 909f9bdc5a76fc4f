"""Request and response shapes every service shares."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator


class RequestBody(BaseModel):
    """A request body: an unknown field is 422, and so is a field the server owns (`read_only`), named in the
    error, never silently overwritten (CONTRACT §2)."""

    model_config = ConfigDict(extra="forbid")
    read_only: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _refuse_read_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            sent = sorted(cls.read_only.intersection(data))
            if sent:
                raise ValueError(f"read-only fields cannot be set: {', '.join(sent)}")
        return data


class HistoryRead(BaseModel):
    """One field change: `{at, actor_id, field, old, new}`."""

    at: datetime
    actor_id: str
    field: str
    old: Any
    new: Any


class Transition(BaseModel):
    """A state the caller may move a record to next, with the fields that move needs."""

    status: str
    required_fields: list[str]
