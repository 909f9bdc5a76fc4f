"""Background loops of the incident service: SLA thresholds and auto-close. Safe with many replicas. Each
pass is one transaction of the shared seam."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from itsm_shared.app import Runtime
from itsm_shared.db import transaction
from sqlmodel.ext.asyncio.session import AsyncSession

from incident import automation
from incident.config import get_settings

log = logging.getLogger(__name__)
# Incidents per SLA pass: each pass holds their locks until it commits.
SLA_BATCH = 20


async def _drain(rt: Runtime, work: Callable[[AsyncSession], Awaitable[int]], what: str) -> None:
    """Run passes of `work`, one transaction each, until a pass finds nothing to do."""
    try:
        while True:
            async with transaction(rt.sessions) as session:
                if await work(session) == 0:
                    return
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s pass failed", what)


async def sla_loop(rt: Runtime) -> None:
    tick = get_settings().sla_tick_seconds
    while True:
        await _drain(rt, lambda session: automation.fire_due_clocks(session, limit=SLA_BATCH), "SLA scheduler")
        await asyncio.sleep(tick)


async def autoclose_loop(rt: Runtime) -> None:
    settings = get_settings()
    while True:
        await _drain(rt, lambda session: automation.autoclose(session, settings.incident_autoclose_days), "auto-close")
        await asyncio.sleep(settings.autoclose_tick_seconds)
