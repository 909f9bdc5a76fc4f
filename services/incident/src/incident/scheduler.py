"""Background loops of the incident service: SLA thresholds and auto-close. Safe with many replicas."""

from __future__ import annotations

import asyncio
import logging

from itsm_shared.app import Runtime

from incident import automation
from incident.config import get_settings

log = logging.getLogger(__name__)


async def sla_loop(rt: Runtime) -> None:
    tick = get_settings().sla_tick_seconds
    while True:
        try:
            async with rt.sessions() as session:
                while await automation.fire_due_clocks(session) > 0:
                    pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("SLA scheduler pass failed")
        await asyncio.sleep(tick)


async def autoclose_loop(rt: Runtime) -> None:
    settings = get_settings()
    while True:
        try:
            async with rt.sessions() as session:
                while await automation.autoclose(session, settings.incident_autoclose_days) > 0:
                    pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("auto-close pass failed")
        await asyncio.sleep(settings.autoclose_tick_seconds)
