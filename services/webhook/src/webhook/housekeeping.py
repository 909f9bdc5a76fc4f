"""The pruning loop: consumed events older than the retention window go, with their deliveries and attempts
(the delivery log keeps what replays can send), unless a delivery of theirs is still pending; so do the inbox's
record of them and rotated-out secrets past their overlap. One transaction of the seam per chunk."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from itsm_shared.app import Runtime
from itsm_shared.db import driver_connection, transaction
from sqlmodel.ext.asyncio.session import AsyncSession

from webhook.config import get_settings

log = logging.getLogger(__name__)

CHUNK = 5000
PRUNE_EVENTS = """
WITH old AS (
    SELECT e.id FROM stored_event e
    WHERE e.received_at < now() - $1::interval
      AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.event_id = e.id AND d.status = 'pending')
    LIMIT $2
)
DELETE FROM stored_event WHERE id IN (SELECT id FROM old)
"""
PRUNE_INBOX = """
DELETE FROM inbox WHERE ctid IN (SELECT ctid FROM inbox WHERE received_at < now() - $1::interval LIMIT $2)
"""
EXPIRE_SECRETS = """
UPDATE subscription SET previous_secret = NULL, previous_secret_expires_at = NULL
WHERE previous_secret_expires_at < now()
"""


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def prune(session: AsyncSession, retention: timedelta) -> int:
    """One chunk; how many rows it removed (0: nothing left to do)."""
    connection = await driver_connection(session)
    removed = _count(await connection.execute(PRUNE_EVENTS, retention, CHUNK))
    removed += _count(await connection.execute(PRUNE_INBOX, retention, CHUNK))
    await connection.execute(EXPIRE_SECRETS)
    return removed


async def prune_loop(rt: Runtime) -> None:
    settings = get_settings()
    retention = timedelta(days=settings.webhook_retention_days)
    while True:
        try:
            while True:
                async with transaction(rt.sessions) as session:
                    if await prune(session, retention) == 0:
                        break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook pruning failed")
        await asyncio.sleep(settings.webhook_prune_seconds)
