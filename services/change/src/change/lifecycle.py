"""The change state model (CONTRACT §6, ServiceNow's): one path per type, in one place.

standard:  new -> scheduled -> implement -> review -> closed              (pre-approved)
normal:    new -> assess -> authorize -> scheduled -> implement -> review -> closed
emergency: new -> authorize -> scheduled -> implement -> review -> closed

`cancelled` from any state before implement. `authorize -> scheduled` opens only once the CAB approval has
reached its quorum (usually it is taken by the approval itself); `authorize -> new` is taken only by a
rejection, never by a PATCH. `closed` and `cancelled` are final.

Each type is one `ChangeMachine`: the shared state machine with the approval gate and change's own refusals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from itsm_shared.errors import Conflict
from itsm_shared.lifecycle import StateMachine

from change.models import OCCUPYING_STATUSES, Approval, ChangeType, CloseCode, Status

S = Status
_AFTER_SCHEDULED: Mapping[str, frozenset[str]] = {
    S.SCHEDULED: frozenset({S.IMPLEMENT, S.CANCELLED}),
    S.IMPLEMENT: frozenset({S.REVIEW}),
    S.REVIEW: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
    S.CANCELLED: frozenset(),
}

PATHS: Mapping[ChangeType, Mapping[str, frozenset[str]]] = {
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
REQUIRED_FIELDS: Mapping[ChangeType, Mapping[str, tuple[str, ...]]] = {
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
# What the CAB approves besides the type and the risk (settled before it decides). Changing one of them on an
# approved RFC reopens approval, as ServiceNow does: from authorize or scheduled the RFC returns to authorize
# with a new round (`approval: requested`), in which earlier approvals no longer count; once implementation has
# started they are fixed (409). Filling one left empty at approval (a window chosen afterwards) changes nothing.
APPROVED_SCOPE = (
    "configuration_items",
    "planned_start",
    "planned_end",
    "implementation_plan",
    "backout_plan",
    "test_plan",
)
REOPENABLE = frozenset({S.AUTHORIZE, S.SCHEDULED})
SCOPE_FIXED = frozenset({S.IMPLEMENT, S.REVIEW})


class ChangeMachine(StateMachine):
    """The path of one change type, gated by the CAB: `values` carry the RFC's `approval`."""

    def edges(self, current: str, values: Mapping[str, Any]) -> frozenset[str]:
        goals = super().edges(current, values)
        if current == S.AUTHORIZE and values.get("approval") != Approval.APPROVED:
            goals = goals - {S.SCHEDULED}
        return goals

    def present(self, values: Mapping[str, Any], name: str) -> bool:
        if name == "risk_assessment":
            return bool(values.get("risk_assessment") or values.get("risk_override"))
        return super().present(values, name)

    def refusal(self, current: str, target: str, allowed: frozenset[str]) -> Conflict:
        if current == S.AUTHORIZE and target == S.SCHEDULED:
            return Conflict("the change is awaiting CAB approval; it is scheduled once the approvals reach quorum")
        if current == S.AUTHORIZE and target == S.NEW:
            return Conflict("a change returns to new only by a rejection (POST …/approvals)")
        return super().refusal(current, target, allowed)


MACHINES: Mapping[ChangeType, ChangeMachine] = {
    kind: ChangeMachine(
        noun=f"a {kind} change",
        transitions=PATHS[kind],
        required=REQUIRED_FIELDS[kind],
        choices={"close_code": CloseCode},
    )
    for kind in ChangeType
}


def machine(change_type: str) -> ChangeMachine:
    return MACHINES[ChangeType(change_type)]
