"""Helpers of the shared-mechanism tests: the service their events come from, the handler type, committed appends.
(Waiting with a deadline and watching the exchange: `eventually`, `EventProbe` in itsm_shared.testing.)"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from itsm_shared.db import transaction
from itsm_shared.events import CloudEvent, new_event
from itsm_shared.outbox import append
from itsm_shared.relay import application_name
from itsm_shared.trust import EVERYTHING, Role
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

SERVICE = "shared"  # events below come from /itsm/shared
# The test service's role in the trust table (conftest.shared_role): it publishes, and binds, any routing key.
SERVICE_ROLE = Role(publishes=(EVERYTHING,), binds=(EVERYTHING,))
Handler = Callable[[CloudEvent[dict[str, Any]]], Awaitable[None]]


async def append_committed(sessions: async_sessionmaker[AsyncSession], *events: dict[str, Any]) -> None:
    """The events appended in one transaction that the services' seam commits (and that wakes the relays)."""
    async with transaction(sessions) as session:
        for event in events:
            await append(session, event)


def event(type_: str, **data: Any) -> dict[str, Any]:
    """An event of the test service, about a new subject."""
    return new_event(service=SERVICE, type=type_, subject=uuid.uuid4(), data=data)


async def relay_connections(sessions: async_sessionmaker[AsyncSession]) -> list[int]:
    """The backends of this service's outbox relays (their connection's application_name)."""
    async with sessions() as session:
        pids = await session.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = :name"),
            {"name": application_name(SERVICE)},
        )
        return [int(pid) for (pid,) in pids]
