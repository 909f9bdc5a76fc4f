"""The change state model (CONTRACT §6, ServiceNow's): one path per type, in one place.

standard:  new -> scheduled -> implement -> review -> closed              (pre-approved)
normal:    new -> assess -> authorize -> scheduled -> implement -> review -> closed
emergency: new -> authorize -> scheduled -> implement -> review -> closed

`cancelled` from any state before implement. `authorize -> scheduled` opens only once the CAB approval has
reached its quorum (usually it is taken by the approval itself); `authorize -> new` is taken only by a
rejection, never by a PATCH. `closed` and `cancelled` are final."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from itsm_shared.errors import Conflict, Invalid

from change.models import OCCUPYING_STATUSES, Approval, ChangeType, CloseCode, Status

S = Status
_AFTER_SCHEDULED: Mapping[Status, frozenset[Status]] = {
    S.SCHEDULED: frozenset({S.IMPLEMENT, S.CANCELLED}),
    S.IMPLEMENT: frozenset({S.REVIEW}),
    S.REVIEW: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
    S.CANCELLED: frozenset(),
}

PATHS: Mapping[ChangeType, Mapping[Status, frozenset[Status]]] = {
    ChangeType.STANDARD: {
        S.NEW: frozenset({S.SCHEDULED, S.CANCELLED}),
        **_AFTER_SCHEDULED,
    },
    ChangeType.NORMAL: {
        S.NEW: frozenset({S.ASSESS, S.CANCELLED}),
        S.ASSESS: frozenset({S.AUTHORIZE, S.CANCELLED}),
        S.AUTHORIZE: frozenset({S.SCHEDULED, S.CANCELLED}),
        **_AFTER_SCHEDULED,
    },
    ChangeType.EMERGENCY: {
        S.NEW: frozenset({S.AUTHORIZE, S.CANCELLED}),
        S.AUTHORIZE: frozenset({S.SCHEDULED, S.CANCELLED}),
        **_AFTER_SCHEDULED,
    },
}

PLANS = ("implementation_plan", "backout_plan")
SCHEDULE = ("planned_start", "planned_end", "configuration_items")

# What moving to a state needs, in the same PATCH or already on the record. `risk_assessment` is also met by
# a change manager's risk override.
REQUIRED_FIELDS: Mapping[ChangeType, Mapping[Status, tuple[str, ...]]] = {
    ChangeType.STANDARD: {
        S.SCHEDULED: (*PLANS, *SCHEDULE),
        S.CLOSED: ("close_code", "close_notes"),
    },
    ChangeType.NORMAL: {
        S.ASSESS: (*PLANS, "test_plan"),
        S.AUTHORIZE: (*PLANS, "test_plan", "risk_assessment"),
        S.SCHEDULED: SCHEDULE,
        S.CLOSED: ("close_code", "close_notes"),
    },
    ChangeType.EMERGENCY: {
        S.AUTHORIZE: (*PLANS, "risk_assessment"),
        S.SCHEDULED: SCHEDULE,
        S.CLOSED: ("close_code", "close_notes"),
    },
}

# Risk (questionnaire and override) and type are settled before authorization opens.
RISK_EDITABLE = frozenset({S.NEW, S.ASSESS})
TYPE_EDITABLE = frozenset({S.NEW})
# States in which the RFC holds its planned window on its configuration items: they cannot be cleared.
HOLDING = frozenset(OCCUPYING_STATUSES)


def edges(change_type: str, current: str, approval: str) -> frozenset[Status]:
    goals = PATHS[ChangeType(change_type)][Status(current)]
    if current == S.AUTHORIZE and approval != Approval.APPROVED:
        goals = goals - {S.SCHEDULED}
    return goals


def required(change_type: str, target: str) -> tuple[str, ...]:
    return REQUIRED_FIELDS[ChangeType(change_type)].get(Status(target), ())


def _present(values: Mapping[str, Any], field: str) -> bool:
    if field == "risk_assessment":
        return bool(values.get("risk_assessment") or values.get("risk_override"))
    return bool(values.get(field))


def check_transition(change_type: str, current: str, target: str, approval: str, values: Mapping[str, Any]) -> None:
    """409 for an edge this type's path does not have (or not yet: authorize before quorum); 422 when the
    target's required fields are missing."""
    source, goal = Status(current), Status(target)
    allowed = edges(change_type, source, approval)
    if goal not in allowed:
        if source == S.AUTHORIZE and goal == S.SCHEDULED:
            raise Conflict("the change is awaiting CAB approval; it is scheduled once the approvals reach quorum")
        if source == S.AUTHORIZE and goal == S.NEW:
            raise Conflict("a change returns to new only by a rejection (POST …/approvals)")
        names = ", ".join(sorted(allowed)) or "none: it is final"
        raise Conflict(f"a {change_type} change cannot go from {source} to {goal} (allowed: {names})")
    missing = [f for f in required(change_type, goal) if not _present(values, f)]
    if missing:
        raise Invalid(
            f"moving to {goal} needs {', '.join(missing)}",
            errors=[{"loc": ["body", f], "msg": f"required to move to {goal}"} for f in missing],
        )
    if goal == S.CLOSED and values.get("close_code") not in set(CloseCode):
        raise Invalid(
            "unknown close_code", errors=[{"loc": ["body", "close_code"], "msg": f"one of {sorted(CloseCode)}"}]
        )


def transitions_from(change_type: str, current: str, approval: str) -> list[dict[str, Any]]:
    return [
        {"status": str(goal), "required_fields": list(required(change_type, goal))}
        for goal in sorted(edges(change_type, current, approval))
    ]
