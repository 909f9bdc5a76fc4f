"""Named crash points, so tests can kill a process at an exact moment (ITSM_FAULT_POINT)."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)
_armed: str | None = None


def arm(point: str | None) -> None:
    global _armed
    _armed = point
    if point:
        log.warning("fault point armed", extra={"fault_point": point})


def reach(point: str) -> None:
    if _armed == point:
        log.warning("fault point reached: killing process", extra={"fault_point": point})
        os.kill(os.getpid(), signal.SIGKILL)
