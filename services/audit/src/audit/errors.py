"""The audit log's own errors."""

from __future__ import annotations

from itsm_shared.errors import Invalid


class InvalidEvent(Exception):
    """The message is not a CloudEvent this log can hold; it is parked with this reason."""


class QueueMissing(Invalid):
    """A replay names a queue the broker does not have: nothing is published."""

    def __init__(self, queue: str) -> None:
        super().__init__(
            f"queue {queue!r} does not exist; declare and bind it first",
            errors=[{"loc": ["body", "queue"], "msg": "no such queue"}],
        )
