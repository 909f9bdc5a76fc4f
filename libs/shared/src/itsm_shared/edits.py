"""Field edits: what a use case did to one record, as {field: [old, new]} ready for its history rows and for
the `changes` of an `*.updated` event."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import Enum
from typing import Any


def json_value(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


class FieldEdits:
    """Set fields on `record`, remembering each field's first old value and latest new value."""

    def __init__(self, record: Any) -> None:
        self.record = record
        self.fields: dict[str, list[Any]] = {}

    def set(self, field: str, value: Any) -> bool:
        old = getattr(self.record, field)
        if old == value:
            return False
        first = self.fields.get(field, [json_value(old)])[0]
        setattr(self.record, field, value)
        if first == json_value(value):
            self.fields.pop(field, None)  # changed and changed back: no change
        else:
            self.fields[field] = [first, json_value(value)]
        return True

    def __bool__(self) -> bool:
        return bool(self.fields)

    def __contains__(self, field: str) -> bool:
        return field in self.fields
