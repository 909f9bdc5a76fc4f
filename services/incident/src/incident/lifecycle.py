"""The incident state model (CONTRACT §4, ServiceNow's), in one place."""

from __future__ import annotations

from itsm_shared.lifecycle import StateMachine

from incident.models import HoldReason, Status

MACHINE = StateMachine(
    noun="an incident",
    transitions={
        Status.NEW: frozenset({Status.IN_PROGRESS, Status.ON_HOLD, Status.RESOLVED, Status.CANCELLED}),
        Status.IN_PROGRESS: frozenset({Status.ON_HOLD, Status.RESOLVED, Status.CANCELLED}),
        Status.ON_HOLD: frozenset({Status.IN_PROGRESS, Status.RESOLVED, Status.CANCELLED}),
        Status.RESOLVED: frozenset({Status.CLOSED, Status.IN_PROGRESS}),
        Status.CLOSED: frozenset(),
        Status.CANCELLED: frozenset(),
    },
    required={
        Status.ON_HOLD: ("hold_reason",),
        Status.RESOLVED: ("resolution_code", "resolution_notes"),
    },
    choices={"hold_reason": HoldReason},
)
