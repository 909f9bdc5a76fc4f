"""A broker cluster's nodes in ITSM_AMQP_URLS: a node that refuses sends the relay and the consumers' connection on
to the next. (The whole cluster under a stopped queue leader: tests/e2e/test_broker_cluster.py.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from itsm_shared.broker import FailoverConnection, connect_robust, make_broker
from itsm_shared.events import new_event
from itsm_shared.relay import OutboxRelay
from itsm_shared.settings import ServiceSettings
from itsm_shared.testing import Listen, eventually
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .support import SERVICE, append_committed

REFUSING = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1


def cluster_settings(settings: ServiceSettings) -> ServiceSettings:
    return settings.model_copy(update={"amqp_url": REFUSING, "amqp_urls": f"{REFUSING},{settings.amqp_url}"})


async def test_the_relay_publishes_through_the_next_node_when_the_first_refuses(
    settings: ServiceSettings,
    sessions: async_sessionmaker[AsyncSession],
    listen: Listen,
    relays: Callable[..., OutboxRelay],
    clean_outbox: None,
) -> None:
    probe = await listen("failover.*")
    relays(relay_settings=cluster_settings(settings))
    event = new_event(service=SERVICE, type="failover.created", subject=uuid.uuid4(), data={})
    await append_committed(sessions, event)
    await probe.wait(event["subject"], timeout=10)


async def test_the_consumers_connection_moves_on_to_the_next_node(settings: ServiceSettings) -> None:
    broker = make_broker(cluster_settings(settings))
    try:
        await broker.connect()  # fail_fast off: it returns while the connection keeps trying in the background

        async def connected() -> bool:
            return await broker.ping(timeout=1)

        await eventually(connected, timeout=15, what="the broker connected through the second node")
        connection = broker._connection
        assert isinstance(connection, FailoverConnection)
        assert connection.node == 1
    finally:
        await broker.stop()


async def test_the_batch_consumers_connection_moves_on_to_the_next_node(settings: ServiceSettings) -> None:
    # It used to connect to ITSM_AMQP_URL only, so the batch consumers (audit, problem) waited for that node.
    connection = await asyncio.wait_for(connect_robust(cluster_settings(settings)), timeout=15)
    try:
        assert isinstance(connection, FailoverConnection)
        assert connection.node == 1
        channel = await connection.channel()
        await channel.close()
    finally:
        await connection.close()
