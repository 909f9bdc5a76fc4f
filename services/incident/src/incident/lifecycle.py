"""The incident state model (CONTRACT §4, ServiceNow's), in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from itsm_shared.errors import Conflict, Invalid

from incident.models import HoldReason, Status

TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.NEW: frozenset({Status.IN_PROGRESS, Status.ON_HOLD, Status.RESOLVED, Status.CANCELLED}),
    Status.IN_PROGRESS: frozenset({Status.ON_HOLD, Status.RESOLVED, Status.CANCELLED}),
    Status.ON_HOLD: frozenset({Status.IN_PROGRESS, Status.RESOLVED, Status.CANCELLED}),
    Status.RESOLVED: frozenset({Status.CLOSED, Status.IN_PROGRESS}),
    Status.CLOSED: frozenset(),
    Status.CANCELLED: frozenset(),
}

# What each target state needs in the same PATCH (or already on the record).
REQUIRED_FIELDS: Mapping[Status, tuple[str, ...]] = {
    Status.ON_HOLD: ("hold_reason",),
    Status.RESOLVED: ("resolution_code", "resolution_notes"),
}


def check_transition(current: str, target: str, values: Mapping[str, Any]) -> None:
    """409 for an edge the model does not have; 422 when the target's required fields are missing."""
    source, goal = Status(current), Status(target)
    if goal not in TRANSITIONS[source]:
        allowed = ", ".join(sorted(TRANSITIONS[source])) or "none: it is final"
        raise Conflict(f"an incident cannot go from {source} to {goal} (allowed: {allowed})")
    missing = [f for f in REQUIRED_FIELDS.get(goal, ()) if not values.get(f)]
    if missing:
        raise Invalid(
            f"moving to {goal} needs {', '.join(missing)}",
            errors=[{"loc": ["body", f], "msg": f"required to move to {goal}"} for f in missing],
        )
    if goal == Status.ON_HOLD and values.get("hold_reason") not in set(HoldReason):
        raise Invalid(
            "unknown hold_reason", errors=[{"loc": ["body", "hold_reason"], "msg": f"one of {sorted(HoldReason)}"}]
        )


def transitions_from(current: str) -> list[dict[str, Any]]:
    return [
        {"status": str(goal), "required_fields": list(REQUIRED_FIELDS.get(goal, ()))}
        for goal in sorted(TRANSITIONS[Status(current)])
    ]
