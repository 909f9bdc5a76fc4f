"""The problem state model (CONTRACT §5, ServiceNow's best-practice model), in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from itsm_shared.errors import Conflict, Invalid

from problem.models import ResolutionCode, Status

_CANCEL = frozenset({Status.CANCELLED})
TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.NEW: frozenset({Status.ASSESSED}) | _CANCEL,
    Status.ASSESSED: frozenset({Status.ROOT_CAUSE_ANALYSIS}) | _CANCEL,
    Status.ROOT_CAUSE_ANALYSIS: frozenset({Status.FIX_IN_PROGRESS}) | _CANCEL,
    Status.FIX_IN_PROGRESS: frozenset({Status.RESOLVED}) | _CANCEL,
    Status.RESOLVED: frozenset({Status.CLOSED}),
    Status.CLOSED: frozenset(),
    Status.CANCELLED: frozenset(),
}

# A fix is worked on once the cause is known; a problem is resolved with a resolution code.
REQUIRED_FIELDS: Mapping[Status, tuple[str, ...]] = {
    Status.FIX_IN_PROGRESS: ("root_cause",),
    Status.RESOLVED: ("resolution_code",),
}


def check_transition(current: str, target: str, values: Mapping[str, Any]) -> None:
    source, goal = Status(current), Status(target)
    if goal not in TRANSITIONS[source]:
        allowed = ", ".join(sorted(TRANSITIONS[source])) or "none: it is final"
        raise Conflict(f"a problem cannot go from {source} to {goal} (allowed: {allowed})")
    missing = [f for f in REQUIRED_FIELDS.get(goal, ()) if not values.get(f)]
    if missing:
        raise Invalid(
            f"moving to {goal} needs {', '.join(missing)}",
            errors=[{"loc": ["body", f], "msg": f"required to move to {goal}"} for f in missing],
        )
    if goal == Status.RESOLVED and values.get("resolution_code") not in set(ResolutionCode):
        raise Invalid(
            "unknown resolution_code",
            errors=[{"loc": ["body", "resolution_code"], "msg": f"one of {sorted(ResolutionCode)}"}],
        )


def transitions_from(current: str) -> list[dict[str, Any]]:
    return [
        {"status": str(goal), "required_fields": list(REQUIRED_FIELDS.get(goal, ()))}
        for goal in sorted(TRANSITIONS[Status(current)])
    ]
