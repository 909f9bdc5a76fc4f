"""Issue #11, finding 2: consumers trusted anything published on the exchange. Each service now has a broker user of
its own whose topic permissions let it publish only its own routing keys; every publish carries its `user_id`,
which RabbitMQ validates; consumers believe an event only from the broker user of the service its `source` names,
of a type that service publishes and the queue is bound to (itsm_shared.trust). Every attack here runs against
the real RabbitMQ, with users this session created (`broker_users`: the services', with the permissions deploy
gives them), and was possible before."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed
from faststream.rabbit import RabbitBroker
from itsm_shared import trust
from itsm_shared.batches import BatchConsumer, Untrusted, cloud_events
from itsm_shared.broker import declare_dead_letter_queue, declare_topology, make_broker
from itsm_shared.broker_users import Topology, definitions, permissions, topic_permissions
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, CloudEvent, new_event
from itsm_shared.relay import OutboxRelay
from itsm_shared.settings import ServiceSettings
from itsm_shared.testing import BrokerUsers, Listen, eventually
from itsm_shared.trust import Delivery, refusal, sequence_refusal, topic_matches
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .support import SERVICE, append_committed
from .test_inbox import header, parked

Event = CloudEvent[dict[str, Any]]
Start = Callable[[list[tuple[Any, ...]]], Awaitable[RabbitBroker]]


def problem_resolved(source: str = "problem", **data: Any) -> dict[str, Any]:
    return new_event(service=source, type="problem.resolved", subject=uuid.uuid4(), data={"n": 1, **data})


async def send(
    connection: AbstractRobustConnection,
    exchange: str,
    event: dict[str, Any] | bytes,
    routing_key: str,
    *,
    user_id: str | None = None,
) -> None:
    """Publish with confirms on a channel of its own (a refusal closes the channel, and raises here)."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        target = channel.default_exchange if exchange == "" else await channel.get_exchange(exchange, ensure=False)
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        await target.publish(
            aio_pika.Message(body, content_type=CLOUDEVENTS_CONTENT_TYPE, user_id=user_id), routing_key=routing_key
        )
    finally:
        if not channel.is_closed:
            await channel.close()


@pytest.fixture
async def as_user(broker_users: BrokerUsers) -> AsyncIterator[Callable[[str], Awaitable[AbstractRobustConnection]]]:
    """Connections as a service's broker user, closed after the test."""
    opened: list[AbstractRobustConnection] = []

    async def connect(service: str) -> AbstractRobustConnection:
        opened.append(await aio_pika.connect_robust(broker_users.url(service)))
        return opened[-1]

    yield connect
    for connection in opened:
        await connection.close()


# ---------------------------------------------------------------- the rules, without a broker


def test_topic_patterns_match_as_rabbitmq_does() -> None:
    assert topic_matches("problem.resolved", "problem.resolved")
    assert not topic_matches("problem.resolved", "problem.resolved.x")
    assert topic_matches("incident.*", "incident.created") and not topic_matches("incident.*", "incident")
    assert topic_matches("incident.#", "incident") and topic_matches("incident.#", "incident.a.b")
    assert topic_matches("#", "auth.login_failed") and not topic_matches("auth.#", "authx.login_failed")


def test_who_publishes_what() -> None:
    settings = ServiceSettings(broker_user_prefix="p.")
    kwargs: dict[str, Any] = {"bindings": ("#",), "publisher": None}

    def check(source: str, type_: str, user: str | None, exchange: str = "itsm.events", key: str = "") -> str | None:
        delivery = Delivery(user, exchange, key or type_.removeprefix("itsm."))
        return refusal(settings, source=f"/itsm/{source}", type=type_, delivery=delivery, **kwargs)

    assert check("change", "itsm.blackout_window.created", "p.change") is None
    assert check("incident", "itsm.incident.created", "p.incident") is None
    assert "no user_id" in (check("incident", "itsm.incident.created", None) or "")
    assert "published by broker user 'p.problem'" in (check("incident", "itsm.incident.created", "p.problem") or "")
    assert "does not publish" in (check("incident", "itsm.problem.resolved", "p.incident") or "")
    assert "does not publish" in (check("audit", "itsm.audit.stored", "p.audit") or "")
    assert "routing key" in (check("incident", "itsm.incident.created", "p.incident", key="incident.x") or "")
    assert "not to 'itsm.events'" in (check("incident", "itsm.incident.created", "p.incident", "incident.x") or "")
    # Replays: from the audit user through the default exchange, for any source; from nobody else.
    assert check("incident", "itsm.incident.created", "p.audit", "", key="problem.incidents") is None
    assert "only audit replays" in (check("incident", "itsm.incident.created", "p.incident", "", "q") or "")
    kwargs.update(bindings=("problem.resolved",), publisher="problem")
    assert check("problem", "itsm.problem.resolved", "p.problem") is None
    assert "takes events of problem only" in (check("incident", "itsm.incident.created", "p.incident") or "")
    assert "takes problem.resolved" in (check("problem", "itsm.problem.created", "p.problem") or "")
    assert "takes problem.resolved" in (check("problem", "itsm.problem.created", "p.audit", "", "q") or "")


def test_a_sequence_may_run_ahead_of_what_was_applied_by_a_bounded_gap() -> None:
    assert sequence_refusal(1, None) is None and sequence_refusal(trust.MAX_SEQUENCE_GAP, None) is None
    assert sequence_refusal(trust.MAX_SEQUENCE_GAP + 1, None) is not None
    assert sequence_refusal(7 + trust.MAX_SEQUENCE_GAP, 7) is None
    assert sequence_refusal(2**62, 7) is not None


def test_permissions_are_per_service() -> None:
    names = Topology(exchange="x.events", dead_letter_exchange="x.dlx", queue_prefix="x.", user_prefix="x.")
    incident, audit = permissions("incident", names), permissions("audit", names)
    assert incident["write"] == r"^(x\.events\.unrouted|x\.dlx|x\.events|x\.incident\..*)$"
    assert "amq\\.default" in audit["write"] and "x\\.events|" not in audit["write"]
    assert topic_permissions("change", names) == {
        "exchange": "x.events",
        "write": r"^(change|blackout_window|standard_change_template)\.",
        "read": "^$",
    }
    assert topic_permissions("audit", names)["write"] == "^$" and topic_permissions("audit", names)["read"] == ".*"
    document = definitions({"incident": "secret"}, names)
    assert document["users"] == [{"name": "x.incident", "password": "secret", "tags": []}]


# ---------------------------------------------------------------- what the broker enforces


async def test_a_service_user_publishes_only_its_own_routing_keys(
    as_user: Callable[[str], Awaitable[AbstractRobustConnection]], settings: ServiceSettings, broker: RabbitBroker
) -> None:
    incident = await as_user("incident")
    user = f"{settings.broker_user_prefix}incident"
    own = new_event(service="incident", type="incident.created", subject=None, data={})
    await send(incident, settings.exchange, own, "incident.created", user_id=user)
    for key in ("problem.resolved", "problem.incident_linked", "auth.user_created", "incidentx.created"):
        with pytest.raises(ChannelAccessRefused, match="access to topic"):
            await send(incident, settings.exchange, problem_resolved(), key, user_id=user)


async def test_the_broker_refuses_a_user_id_that_is_not_the_publishers(
    as_user: Callable[[str], Awaitable[AbstractRobustConnection]], settings: ServiceSettings, broker: RabbitBroker
) -> None:
    incident = await as_user("incident")
    with pytest.raises(ChannelPreconditionFailed, match="user_id property set to"):
        await send(
            incident,
            settings.exchange,
            problem_resolved(),
            "incident.x",
            user_id=f"{settings.broker_user_prefix}problem",
        )


async def test_only_the_audit_user_sends_straight_to_a_queue_and_it_publishes_no_events(
    as_user: Callable[[str], Awaitable[AbstractRobustConnection]],
    settings: ServiceSettings,
    broker: RabbitBroker,
    channel: AbstractChannel,
) -> None:
    queue = await channel.declare_queue(f"{settings.broker_user_prefix}sink.{uuid.uuid4().hex[:6]}", exclusive=True)
    incident, audit = await as_user("incident"), await as_user("audit")
    with pytest.raises(ChannelAccessRefused, match=r"amq\.default"):
        await send(incident, "", problem_resolved(), queue.name, user_id=f"{settings.broker_user_prefix}incident")
    await send(audit, "", problem_resolved(), queue.name, user_id=f"{settings.broker_user_prefix}audit")
    assert await eventually(lambda: queue.get(fail=False, no_ack=True))
    with pytest.raises(ChannelAccessRefused):
        await send(
            audit, settings.exchange, problem_resolved(), "audit.x", user_id=f"{settings.broker_user_prefix}audit"
        )


async def test_a_service_binds_only_the_keys_it_consumes(
    as_user: Callable[[str], Awaitable[AbstractRobustConnection]], settings: ServiceSettings, broker: RabbitBroker
) -> None:
    incident = await as_user("incident")
    channel = await incident.channel()
    queue = await channel.declare_queue(f"{settings.broker_user_prefix}incident.{uuid.uuid4().hex[:6]}", exclusive=True)
    await queue.bind(settings.exchange, "problem.resolved")
    with pytest.raises(ChannelAccessRefused, match=r"access to topic 'auth\.#'"):
        await queue.bind(settings.exchange, "auth.#")


# ---------------------------------------------------------------- what the consumers check


@pytest.fixture
def problem_queue(names: dict[str, Any]) -> str:
    return f"itsm.test.{names['run']}.resolutions-{uuid.uuid4().hex[:6]}"


async def test_a_consumer_handles_only_what_the_broker_says_its_publisher_sent(
    consumers: Start,
    as_user: Callable[[str], Awaitable[AbstractRobustConnection]],
    amqp: AbstractRobustConnection,
    channel: AbstractChannel,
    settings: ServiceSettings,
    problem_queue: str,
) -> None:
    """The attacks of the finding on a queue that takes `problem.resolved` from the problem service: a forged
    event without user_id (any client of the broker, here its admin), one from another service routed onto the
    exchange through an exchange binding of its own (topic permissions are checked at publish only), one whose
    source is not its publisher, and one sent straight to the queue, none is handled; each is parked with why."""
    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(str(event.id))

    await consumers([(problem_queue, "problem.resolved", handler, "problem")])
    prefix = settings.broker_user_prefix
    problem, incident = await as_user("problem"), await as_user("incident")

    forged = problem_resolved()
    await send(amqp, settings.exchange, forged, "problem.resolved")  # no user_id: the admin's own client

    # The incident user routes problem.resolved onto the exchange through an exchange it declares and binds.
    relay = f"{prefix}incident.relay-{uuid.uuid4().hex[:6]}"
    side = await incident.channel()
    mine = await side.declare_exchange(relay, aio_pika.ExchangeType.TOPIC, auto_delete=True)
    await (await side.get_exchange(settings.exchange, ensure=False)).bind(mine, "#")
    bypass = problem_resolved()
    await send(incident, relay, bypass, "problem.resolved", user_id=f"{prefix}incident")

    impostor = problem_resolved(source="incident")  # the problem user, claiming to be another service
    await send(problem, settings.exchange, impostor, "problem.resolved", user_id=f"{prefix}problem")

    genuine = problem_resolved()
    await send(problem, settings.exchange, genuine, "problem.resolved", user_id=f"{prefix}problem")
    await eventually(lambda: _async(handled), lambda h: genuine["id"] in h, what="the genuine event handled")

    dead = {json.loads(m.body)["id"]: m for m in await parked(channel, problem_queue, 3)}
    assert handled == [genuine["id"]]
    reasons = {event_id: header(m, "x-itsm-error") for event_id, m in dead.items()}
    assert (
        reasons[forged["id"]] == "untrusted: no user_id: the publisher is unknown (each service sets its broker user's)"
    )
    assert reasons[bypass["id"]].startswith(f"untrusted: published to exchange '{relay}'")
    assert "published by broker user" in reasons[impostor["id"]]
    # Parked as the parking service's user (the consumer's connection), with the publisher the broker named.
    assert header(dead[bypass["id"]], "x-itsm-published-by") == f"{prefix}incident"
    assert header(dead[bypass["id"]], "x-itsm-published-to") == relay
    assert {m.user_id for m in dead.values()} == {trust.connection_user(settings.amqp_url)}
    await side.close()


async def test_a_replay_is_believed_from_the_audit_user_only_and_only_of_the_queues_types(
    consumers: Start,
    as_user: Callable[[str], Awaitable[AbstractRobustConnection]],
    channel: AbstractChannel,
    settings: ServiceSettings,
    problem_queue: str,
) -> None:
    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(str(event.id))

    await consumers([(problem_queue, "problem.resolved", handler, "problem")])
    audit = await as_user("audit")
    user = f"{settings.broker_user_prefix}audit"
    replayed = problem_resolved()
    other_type = new_event(service="problem", type="problem.created", subject=None, data={})
    await send(audit, "", other_type, problem_queue, user_id=user)
    await send(audit, "", replayed, problem_queue, user_id=user)
    await eventually(lambda: _async(handled), lambda h: replayed["id"] in h, what="the replay handled")
    (dead,) = await parked(channel, problem_queue, 1)
    assert header(dead, "x-itsm-error") == "untrusted: this queue takes problem.resolved, not itsm.problem.created"
    assert handled == [replayed["id"]]


async def test_a_batch_consumer_parks_what_its_publisher_did_not_send(
    settings: ServiceSettings,
    sessions: async_sessionmaker[AsyncSession],
    amqp: AbstractRobustConnection,
    channel: AbstractChannel,
    as_user: Callable[[str], Awaitable[AbstractRobustConnection]],
    names: dict[str, Any],
) -> None:
    seen: list[str] = []

    async def handle(session: AsyncSession, events: list[Event]) -> None:
        seen.extend(str(e.id) for e in events)

    broker = make_broker(settings)
    outcomes: list[tuple[object, str]] = []
    consumer: BatchConsumer[Event] = BatchConsumer(
        settings=settings,
        broker=broker,
        sessions=sessions,
        queue=f"itsm.test.{names['run']}.incidents-{uuid.uuid4().hex[:6]}",
        routing_key="incident.#",
        parse=cloud_events(Event),
        handle=handle,
        publisher="incident",
        observe=lambda outcome, how: outcomes.append((outcome, how)),
    )
    consumer.declare()
    await broker.connect()
    await declare_topology(broker, settings)
    await declare_dead_letter_queue(broker, settings, consumer.queue)
    await broker.start()
    task = asyncio.create_task(consumer.run())
    try:
        forged = new_event(service="incident", type="incident.deleted", subject=None, data={"id": str(uuid.uuid4())})
        genuine = new_event(service="incident", type="incident.created", subject=None, data={})
        await send(amqp, settings.exchange, forged, "incident.deleted")
        incident = await as_user("incident")
        await send(
            incident, settings.exchange, genuine, "incident.created", user_id=f"{settings.broker_user_prefix}incident"
        )
        await eventually(lambda: _async(seen), lambda s: genuine["id"] in s, what="the genuine event handled")
        (dead,) = await parked(channel, consumer.queue, 1)
        assert json.loads(dead.body)["id"] == forged["id"] and header(dead, "x-itsm-error").startswith("untrusted: no")
        assert seen == [genuine["id"]] and [how for o, how in outcomes if isinstance(o, Untrusted)] == ["parked"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await broker.stop()
        await channel.queue_delete(consumer.queue)
        await channel.queue_delete(f"{consumer.queue}.dlq")


async def test_the_relay_publishes_as_its_broker_user(
    relays: Callable[..., OutboxRelay],
    settings: ServiceSettings,
    broker_users: BrokerUsers,
    sessions: async_sessionmaker[AsyncSession],
    listen: Listen,
    clean_outbox: None,
) -> None:
    own = settings.model_copy(update={"amqp_url": broker_users.url(SERVICE)})
    probe = await listen("signed.*")
    relays(relay_settings=own)
    event = new_event(service=SERVICE, type="signed.created", subject=uuid.uuid4(), data={})
    await append_committed(sessions, event)
    await probe.wait(event["subject"])
    message: AbstractIncomingMessage = probe.message_of(probe.of(event["subject"])[0])
    assert message.user_id == broker_users.user(SERVICE)


async def _async(value: Any) -> Any:
    return value
