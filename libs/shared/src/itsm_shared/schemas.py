"""Request and response shapes every service shares."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator


def _document_body(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """What `RequestBody` refuses, in its JSON Schema: null for `not_null` fields. (U+0000 in a string, which
    PostgreSQL text cannot hold, is a rule of the document's `x-rules` rather than a `pattern` on every string:
    schema-driven generators filter patterned strings against their lengths, which made them ten times slower.)"""
    properties: dict[str, Any] = schema.get("properties", {})
    for name in getattr(model, "not_null", frozenset()):
        prop = properties.get(name)
        if prop is not None and "anyOf" in prop:
            branches = [b for b in prop["anyOf"] if b.get("type") != "null"]
            if len(branches) == 1:
                prop.pop("anyOf")
                prop.update(branches[0])
            else:
                prop["anyOf"] = branches
            if prop.get("default", 0) is None:
                prop.pop("default")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class RequestBody(BaseModel):
    """A request body: an unknown field is 422, and so is a field the server owns (`read_only`), named in the
    error, never silently overwritten (CONTRACT §2); so is null for a field that may be left out but never
    cleared (`not_null`), and a string holding U+0000 (PostgreSQL text cannot): the document states both."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_document_body)
    read_only: ClassVar[frozenset[str]] = frozenset()
    not_null: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _refuse_read_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            sent = sorted(cls.read_only.intersection(data))
            if sent:
                raise ValueError(f"read-only fields cannot be set: {', '.join(sent)}")
            nulls = sorted(name for name in cls.not_null.intersection(data) if data[name] is None)
            if nulls:
                raise ValueError(f"cannot be null: {', '.join(nulls)}")
            if _has_nul(data):
                raise ValueError("strings cannot hold U+0000")
        return data


def _json_integer(value: Any) -> Any:
    # JSON Schema's integer: 3 and 3.0 are, "3" and true are not (pydantic's lax int takes both).
    if isinstance(value, str | bytes | bool):
        raise ValueError("must be a JSON integer")
    return value


# A date and time as RFC 3339 writes it (seconds and offset may be left out where the field allows it). Pydantic
# would also read a number of seconds since 1970 ("0"), which the document's `format: date-time` does not allow.
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?")


def _rfc3339(value: Any) -> Any:
    if isinstance(value, str | bytes | int | float) and not (isinstance(value, str) and RFC3339.fullmatch(value)):
        raise ValueError("must be an RFC 3339 date-time")
    return value


# A date-time in a body or a query parameter: `Annotated[datetime, AsDateTime]`, or over an aware type.
AsDateTime = BeforeValidator(_rfc3339)
Timestamp = Annotated[datetime, AsDateTime]

# An integer field of a request body, as its schema says: a number without a fraction, never a string or a boolean.
JsonInt = Annotated[int, BeforeValidator(_json_integer)]


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
