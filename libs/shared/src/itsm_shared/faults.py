"""Named crash points, so tests can kill a process at an exact moment (ITSM_FAULT_POINT)."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)
_armed: str | None = None
_also: int | None = None


def arm(point: str | None, *, also: int | None = None) -> None:
    """Arm `point`; reaching it kills this process, and first the process `also` (the outbox relay's process
    kills its service's: itsm_shared.relay_process)."""
    global _armed, _also
    _armed, _also = point, also
    if point:
        log.warning("fault point armed", extra={"fault_point": point})


def reach(point: str) -> None:
    if _armed == point:
        log.warning("fault point reached: killing process", extra={"fault_point": point})
        if _also is not None:
            os.kill(_also, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
