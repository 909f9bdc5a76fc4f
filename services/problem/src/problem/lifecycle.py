"""The problem state model (CONTRACT §5, ServiceNow's best-practice model), in one place."""

from __future__ import annotations

from itsm_shared.lifecycle import StateMachine

from problem.models import ResolutionCode, Status

_CANCEL = frozenset({Status.CANCELLED})

MACHINE = StateMachine(
    noun="a problem",
    transitions={
        Status.NEW: frozenset({Status.ASSESSED}) | _CANCEL,
        Status.ASSESSED: frozenset({Status.ROOT_CAUSE_ANALYSIS}) | _CANCEL,
        Status.ROOT_CAUSE_ANALYSIS: frozenset({Status.FIX_IN_PROGRESS}) | _CANCEL,
        Status.FIX_IN_PROGRESS: frozenset({Status.RESOLVED}) | _CANCEL,
        Status.RESOLVED: frozenset({Status.CLOSED}),
        Status.CLOSED: frozenset(),
        Status.CANCELLED: frozenset(),
    },
    # A fix is worked on once the cause is known; a problem is resolved with a resolution code.
    required={
        Status.FIX_IN_PROGRESS: ("root_cause",),
        Status.RESOLVED: ("resolution_code",),
    },
    choices={"resolution_code": ResolutionCode},
)
