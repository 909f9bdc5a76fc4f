"""The RabbitMQ side: one broker per process, the topology, and the queue shape every consumer uses."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

import aio_pika
from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection
from faststream.middlewares import AckPolicy
from faststream.rabbit import Channel, ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue

from itsm_shared.settings import ServiceSettings

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import QuorumQueueArgs


log = logging.getLogger(__name__)

# Between a lost connection's attempts (FastStream's and the batch consumers'), each to the next node of a cluster.
RECONNECT_SECONDS = 2.0


class FailoverConnection(RobustConnection):
    """aio-pika's robust connection (it restores channels, queues and consumers after a reconnect) over the nodes of
    a cluster: after a failed attempt the next one goes to the next node, round robin. A lost connection is first
    tried again on its node (a blip), which, if the node is down, fails and moves on."""

    nodes: ClassVar[tuple[str, ...]] = ()  # the first is the URL the connection is made with
    node = 0
    _failed = False

    def _next_node(self) -> None:
        if len(self.nodes) > 1:
            failed, self.node = self.url, (self.node + 1) % len(self.nodes)
            self.url = type(self.url)(self.nodes[self.node])
            log.warning("broker node %s failed; next attempt: %s", _redacted(failed), self)

    # RobustConnection's private attempt (name-mangled), wrapped: after an attempt a node refused, the next goes to
    # the next node (moved on at the next attempt, so aio-pika's warning names the node that failed).
    async def _RobustConnection__connect_transport(self) -> None:  # noqa: N802
        if self._failed:
            self._next_node()
        try:
            await super()._RobustConnection__connect_transport()  # type: ignore[misc]
        except Exception:
            self._failed = True
            raise
        self._failed = False


def _redacted(url: Any) -> str:
    return str(url.with_password("******")) if url.password else str(url)


def failover_connection(urls: Sequence[str]) -> type[FailoverConnection]:
    return type("FailoverConnection", (FailoverConnection,), {"nodes": tuple(urls)})


async def connect_robust(settings: ServiceSettings) -> AbstractRobustConnection:
    """A robust connection of its own (the batch consumers' channels) over the same nodes as the service's broker:
    it waits until some node answers and, once made, restores its channels, queues and consumers after any loss,
    on the next node when its own is down."""
    urls = settings.broker_urls()
    connection_class = failover_connection(urls) if len(urls) > 1 else RobustConnection
    return await aio_pika.connect_robust(
        urls[0], connection_class=connection_class, fail_fast=False, reconnect_interval=RECONNECT_SECONDS
    )


def make_broker(settings: ServiceSettings) -> RabbitBroker:
    # Confirms on, and a mandatory message the broker cannot route raises instead of being "confirmed".
    # Subscribers acknowledge by hand (itsm_shared.inbox): FastStream's default rejects, i.e. drops, on error.
    broker = RabbitBroker(
        settings.amqp_url,
        default_channel=Channel(
            publisher_confirms=True,
            on_return_raises=True,
            prefetch_count=settings.consumer_prefetch,
        ),
        ack_policy=AckPolicy.MANUAL,
        fail_fast=False,
        reconnect_interval=RECONNECT_SECONDS,
        graceful_timeout=10.0,
        logger=None,
    )
    if len(urls := settings.broker_urls()) > 1:
        # FastStream passes its connection arguments to aio_pika.connect_robust, which takes the connection's class.
        broker._connection_kwargs["connection_class"] = failover_connection(urls)
    return broker


def events_exchange(settings: ServiceSettings) -> RabbitExchange:
    """The topic exchange of CONTRACT §8. Unroutable events go to its alternate exchange, never nowhere."""
    return RabbitExchange(
        settings.exchange,
        type=ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": unrouted_name(settings)},
    )


def unrouted_name(settings: ServiceSettings) -> str:
    return f"{settings.exchange}.unrouted"


def dead_letter_exchange(settings: ServiceSettings) -> RabbitExchange:
    return RabbitExchange(settings.dead_letter_exchange, type=ExchangeType.DIRECT, durable=True)


def _quorum(name: str, arguments: dict[str, Any], routing_key: str = "") -> RabbitQueue:
    return RabbitQueue(
        name,
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments=cast("QuorumQueueArgs", arguments),
        routing_key=routing_key,
    )


def event_queue(settings: ServiceSettings, name: str, routing_key: str) -> RabbitQueue:
    """A durable quorum queue with bounded redelivery; whatever exhausts it is dead-lettered to `<name>.dlq`."""
    return _quorum(
        name,
        {
            "x-dead-letter-exchange": settings.dead_letter_exchange,
            "x-dead-letter-routing-key": name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": settings.consumer_delivery_limit,
        },
        routing_key,
    )


def dead_letter_queue(name: str) -> RabbitQueue:
    return _quorum(f"{name}.dlq", {}, routing_key=name)


async def declare_topology(broker: RabbitBroker, settings: ServiceSettings) -> None:
    unrouted = RabbitExchange(unrouted_name(settings), type=ExchangeType.FANOUT, durable=True)
    await broker.declare_exchange(unrouted)
    queue = await broker.declare_queue(_quorum(unrouted_name(settings), {}))
    await queue.bind(unrouted_name(settings))
    await broker.declare_exchange(events_exchange(settings))
    await broker.declare_exchange(dead_letter_exchange(settings))


async def declare_dead_letter_queue(broker: RabbitBroker, settings: ServiceSettings, name: str) -> None:
    dlq = await broker.declare_queue(dead_letter_queue(name))
    await dlq.bind(settings.dead_letter_exchange, routing_key=name)
