"""A batch consumer in a process of its own, for the test that kills it between a batch's commit and its
acknowledgements (`ITSM_FAULT_POINT=batches.after_commit`); settings from the environment (`ITSM_*`).

    python batch_worker.py <queue> <routing key> <max batch>

Its handler (`record_events`, which the tests use too) records each event as a `user_account` row named by the
event's `data.name`: one visible, unique effect per event.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from itsm_shared import faults, trust
from itsm_shared.batches import BatchConsumer, cloud_events
from itsm_shared.broker import make_broker
from itsm_shared.db import make_engine, session_factory
from itsm_shared.events import CloudEvent
from itsm_shared.settings import ServiceSettings
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

Event = CloudEvent[dict[str, Any]]

_RECORD = text(
    "INSERT INTO user_account (id, username, password_hash) "
    "SELECT gen_random_uuid(), u, 'x' FROM unnest(CAST(:names AS text[])) AS u"
)


async def record_events(session: AsyncSession, events: Sequence[Event]) -> None:
    if events:
        await session.execute(_RECORD, {"names": [e.data["name"] for e in events]})


def event_id(event: Event) -> uuid.UUID:
    return event.id


async def main(queue: str, routing_key: str, max_batch: int) -> None:
    from support import SERVICE, SERVICE_ROLE  # run as a script: its directory is on sys.path

    trust.ROLES[SERVICE] = SERVICE_ROLE  # as the tests' conftest: the test service publishes any routing key
    settings = ServiceSettings()
    faults.arm(settings.fault_point)
    engine = make_engine(settings.database_url, pool_size=2)
    broker = make_broker(settings)
    await broker.connect()  # parking publishes through it
    consumer = BatchConsumer(
        settings=settings,
        broker=broker,
        sessions=session_factory(engine),
        queue=queue,
        routing_key=routing_key,
        parse=cloud_events(Event),
        handle=record_events,
        event_id=event_id,
        max_batch=max_batch,
        max_wait=1.0,
    )
    try:
        await consumer.run()
    finally:
        await broker.stop()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
