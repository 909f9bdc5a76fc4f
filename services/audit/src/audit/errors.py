"""The audit log's own errors."""

from __future__ import annotations

from collections.abc import Iterable

from itsm_shared.errors import Invalid


class InvalidEvent(Exception):
    """The message is not a CloudEvent this log can hold; it is parked with this reason."""


class AnchorKeyError(RuntimeError):
    """The anchor key is missing or unusable: the service refuses to start, and says which variable to set."""


class QueueMissing(Invalid):
    """A replay names a queue the broker does not have: nothing is published."""

    def __init__(self, queue: str) -> None:
        super().__init__(
            f"queue {queue!r} does not exist; declare and bind it first",
            errors=[{"loc": ["body", "queue"], "msg": "no such queue"}],
        )


class QueueNotReplayable(Invalid):
    """A replay names a queue that is not one of the services' consumer queues: nothing is published."""

    def __init__(self, queue: str, allowed: Iterable[str]) -> None:
        names = ", ".join(sorted(allowed)) or "none (ITSM_AUDIT_REPLAY_QUEUES is empty)"
        super().__init__(
            f"queue {queue!r} is not a consumer queue of the services; replay goes only to one of: {names}",
            errors=[{"loc": ["body", "queue"], "msg": "not a consumer queue"}],
        )
