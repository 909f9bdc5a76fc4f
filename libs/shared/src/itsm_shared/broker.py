"""The RabbitMQ side: one broker per process, the topology, and the queue shape every consumer uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from faststream.middlewares import AckPolicy
from faststream.rabbit import Channel, ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue

from itsm_shared.settings import ServiceSettings

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import QuorumQueueArgs


def make_broker(settings: ServiceSettings) -> RabbitBroker:
    # Confirms on, and a mandatory message the broker cannot route raises instead of being "confirmed".
    # Subscribers acknowledge by hand (itsm_shared.inbox): FastStream's default rejects, i.e. drops, on error.
    return RabbitBroker(
        settings.amqp_url,
        default_channel=Channel(
            publisher_confirms=True,
            on_return_raises=True,
            prefetch_count=settings.consumer_prefetch,
        ),
        ack_policy=AckPolicy.MANUAL,
        fail_fast=False,
        reconnect_interval=2.0,
        graceful_timeout=10.0,
        logger=None,
    )


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
