"""Idempotent consumption and parking, with real subscribers on the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from faststream.rabbit import RabbitBroker
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, CloudEvent, new_event
from itsm_shared.inbox import PermanentError, claim, handle_once
from itsm_shared.settings import ServiceSettings
from itsm_shared.testing import eventually
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .support import SERVICE, Handler

Start = Callable[[list[tuple[str, str, Handler]]], Awaitable[RabbitBroker]]
Event = CloudEvent[dict[str, Any]]


def queue_name(names: dict[str, Any], what: str) -> str:
    return f"itsm.test.{names['run']}.{what}"


async def publish(
    channel: AbstractChannel, settings: ServiceSettings, body: bytes, routing_key: str, message_id: str | None = None
) -> None:
    """Publish as the test service does: `channel` is the `publisher` fixture's (its broker user), user_id set."""
    exchange = await channel.get_exchange(settings.exchange)
    await exchange.publish(
        aio_pika.Message(
            body,
            message_id=message_id or str(uuid.uuid4()),
            content_type=CLOUDEVENTS_CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=f"{settings.broker_user_prefix}{SERVICE}",
        ),
        routing_key=routing_key,
    )


def encoded(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


async def parked(
    channel: AbstractChannel, queue: str, count: int, timeout: float = 10
) -> list[AbstractIncomingMessage]:
    """Wait for `count` messages in `<queue>.dlq`, taking them off it."""
    dlq = await channel.declare_queue(f"{queue}.dlq", passive=True)
    got: list[AbstractIncomingMessage] = []

    async def drained() -> bool:
        while (message := await dlq.get(no_ack=True, fail=False)) is not None:
            got.append(message)
        return len(got) >= count

    await eventually(drained, timeout=timeout, what=f"{count} parked messages in {queue}.dlq")
    return got


def header(message: AbstractIncomingMessage, name: str) -> str:
    value = (message.headers or {}).get(name)
    return value.decode() if isinstance(value, bytes) else str(value)


async def effects(sessions: async_sessionmaker[AsyncSession], prefix: str) -> int:
    async with sessions() as session:
        count = await session.scalar(
            text("SELECT count(*) FROM user_account WHERE username LIKE :p"), {"p": f"{prefix}%"}
        )
    return int(count or 0)


def record_effect(username: str) -> Callable[[AsyncSession], Awaitable[None]]:
    async def effect(session: AsyncSession) -> None:
        await session.execute(
            text("INSERT INTO user_account (id, username, password_hash) VALUES (:id, :u, 'x')"),
            {"id": uuid.uuid4(), "u": username},
        )

    return effect


# ---------------------------------------------------------------- claim / handle_once


async def test_claim_is_true_once_per_consumer(sessions: async_sessionmaker[AsyncSession]) -> None:
    event_id = uuid.uuid4()
    async with sessions() as session:
        assert await claim(session, "inbox-test-a", event_id) is True
        await session.commit()
    async with sessions() as session:
        assert await claim(session, "inbox-test-a", event_id) is False
        assert await claim(session, "inbox-test-b", event_id) is True  # another consumer has its own inbox
        await session.commit()
    async with sessions() as session:
        assert await claim(session, "inbox-test-b", event_id) is False


async def test_claim_rolls_back_with_the_effect(sessions: async_sessionmaker[AsyncSession]) -> None:
    event_id = uuid.uuid4()
    async with sessions() as session:
        assert await claim(session, "inbox-test-c", event_id) is True
        await session.rollback()  # the effect failed: the event must count as not seen
    async with sessions() as session:
        assert await claim(session, "inbox-test-c", event_id) is True
        await session.commit()


async def test_handle_once_runs_the_effect_once_even_concurrently(sessions: async_sessionmaker[AsyncSession]) -> None:
    event = Event.model_validate(new_event(service="shared", type="once.created", subject=None, data={}))
    prefix = f"once-{event.id}"
    counter = iter(range(100))

    async def effect(session: AsyncSession) -> None:
        await record_effect(f"{prefix}-{next(counter)}")(session)

    results = await asyncio.gather(*(handle_once(sessions, "inbox-test-once", event, effect) for _ in range(4)))
    assert sorted(results) == [False, False, False, True]
    assert await effects(sessions, prefix) == 1


# ---------------------------------------------------------------- subscribers on the real broker


async def test_the_same_event_delivered_twice_has_one_effect(
    consumers: Start,
    channel: AbstractChannel,
    publisher: AbstractChannel,
    settings: ServiceSettings,
    sessions: async_sessionmaker[AsyncSession],
    names: dict[str, Any],
) -> None:
    queue = queue_name(names, "dup")
    deliveries: list[uuid.UUID] = []

    async def handler(event: Event) -> None:
        deliveries.append(event.id)
        await handle_once(sessions, queue, event, record_effect(f"dup-{event.id}"))

    await consumers([(queue, "dup.*", handler)])
    event = new_event(service="shared", type="dup.created", subject=uuid.uuid4(), data={"n": 1})
    for _ in range(2):
        await publish(publisher, settings, encoded(event), "dup.created", message_id=event["id"])

    async def both_handled() -> bool:
        return len(deliveries) == 2

    await eventually(both_handled, what="both deliveries handled")
    assert deliveries == [uuid.UUID(event["id"])] * 2
    assert await effects(sessions, f"dup-{event['id']}") == 1


async def test_malformed_messages_are_parked_and_the_queue_keeps_flowing(
    consumers: Start,
    channel: AbstractChannel,
    publisher: AbstractChannel,
    settings: ServiceSettings,
    names: dict[str, Any],
) -> None:
    queue = queue_name(names, "malformed")
    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(str(event.id))

    await consumers([(queue, "malformed.*", handler)])
    not_json = b"this is {not json"
    not_a_cloudevent = json.dumps({"hello": "world", "type": "itsm.malformed.created"}).encode()
    wrong_type = new_event(service="shared", type="Malformed.Created", subject=None, data={})
    valid = [new_event(service="shared", type="malformed.created", subject=None, data={"n": n}) for n in range(2)]
    await publish(publisher, settings, not_json, "malformed.created", message_id="bad-1")
    await publish(publisher, settings, not_a_cloudevent, "malformed.created", message_id="bad-2")
    await publish(publisher, settings, encoded(wrong_type), "malformed.created", message_id="bad-3")
    for e in valid:
        await publish(publisher, settings, encoded(e), "malformed.created", message_id=e["id"])

    async def valid_handled() -> bool:
        return len(handled) == 2

    await eventually(valid_handled, what="the valid events after the bad ones handled")
    # Each exactly once; in any order: every delivery is its own task (aiormq), up to the prefetch at once.
    assert sorted(handled) == sorted(e["id"] for e in valid)
    dead = {m.message_id: m for m in await parked(channel, queue, 3)}
    assert set(dead) == {"bad-1", "bad-2", "bad-3"}
    assert dead["bad-1"].body == not_json  # parked as it came, for a human to look at
    assert dead["bad-2"].body == not_a_cloudevent
    for message in dead.values():
        assert header(message, "x-itsm-error").startswith("not a valid event")
        assert header(message, "x-itsm-queue") == queue
    assert "specversion" in header(dead["bad-2"], "x-itsm-error")  # the reason names what is missing


async def test_permanent_error_parks_at_once(
    consumers: Start,
    channel: AbstractChannel,
    publisher: AbstractChannel,
    settings: ServiceSettings,
    names: dict[str, Any],
) -> None:
    queue = queue_name(names, "permanent")
    calls: list[str] = []

    async def handler(event: Event) -> None:
        calls.append(str(event.id))
        if event.data.get("poison"):
            raise PermanentError("references an unknown incident")

    await consumers([(queue, "permanent.*", handler)])
    poison = new_event(service="shared", type="permanent.created", subject=None, data={"poison": True})
    fine = new_event(service="shared", type="permanent.created", subject=None, data={})
    await publish(publisher, settings, encoded(poison), "permanent.created", message_id=poison["id"])
    await publish(publisher, settings, encoded(fine), "permanent.created", message_id=fine["id"])

    (dead,) = await parked(channel, queue, 1)
    assert dead.message_id == poison["id"]
    assert header(dead, "x-itsm-error") == "PermanentError: references an unknown incident"
    assert json.loads(dead.body) == poison

    async def fine_handled() -> bool:
        return fine["id"] in calls

    await eventually(fine_handled, what="the next event handled")
    assert calls.count(poison["id"]) == 1  # parked on the first delivery, not retried


async def test_failing_handler_is_redelivered_then_parked_at_the_delivery_limit(
    consumers: Start,
    channel: AbstractChannel,
    publisher: AbstractChannel,
    settings: ServiceSettings,
    names: dict[str, Any],
) -> None:
    assert settings.consumer_delivery_limit == 3
    queue = queue_name(names, "failing")
    calls: list[str] = []
    flaky_failures: list[str] = []

    async def handler(event: Event) -> None:
        calls.append(str(event.id))
        if event.data.get("always_fails"):
            raise RuntimeError("handler bug")
        if event.data.get("fails_once") and str(event.id) not in flaky_failures:
            flaky_failures.append(str(event.id))
            raise RuntimeError("transient-looking bug")

    await consumers([(queue, "failing.*", handler)])
    broken = new_event(service="shared", type="failing.created", subject=None, data={"always_fails": True})
    flaky = new_event(service="shared", type="failing.created", subject=None, data={"fails_once": True})
    await publish(publisher, settings, encoded(broken), "failing.created", message_id=broken["id"])
    await publish(publisher, settings, encoded(flaky), "failing.created", message_id=flaky["id"])

    (dead,) = await parked(channel, queue, 1)
    assert dead.message_id == broken["id"]
    assert header(dead, "x-itsm-error") == "RuntimeError: handler bug"
    assert header(dead, "x-itsm-queue") == queue

    async def flaky_recovered() -> bool:
        return calls.count(flaky["id"]) == 2

    await eventually(flaky_recovered, what="the flaky event handled on its second delivery")
    # Give an extra (wrong) delivery of either message the chance to show up.
    await asyncio.sleep(0.5)
    assert calls.count(broken["id"]) == settings.consumer_delivery_limit
    assert calls.count(flaky["id"]) == 2
    assert await parked_count(channel, queue) == 0  # the flaky one was not parked, nothing parked twice


async def parked_count(channel: AbstractChannel, queue: str) -> int:
    dlq = await channel.declare_queue(f"{queue}.dlq", passive=True)
    return int(dlq.declaration_result.message_count or 0)


async def test_transient_failure_is_retried_in_place_without_spending_deliveries(
    consumers: Start,
    channel: AbstractChannel,
    publisher: AbstractChannel,
    settings: ServiceSettings,
    names: dict[str, Any],
) -> None:
    """A database outage is not the message's fault: more failures than the delivery limit, and still no park."""
    queue = queue_name(names, "transient")
    calls: list[str] = []
    outage = settings.consumer_delivery_limit  # one failure per allowed delivery: parked if they spent deliveries

    async def handler(event: Event) -> None:
        calls.append(str(event.id))
        if len(calls) <= outage:
            raise ConnectionRefusedError("database restarting")

    await consumers([(queue, "transient.*", handler)])
    e = new_event(service="shared", type="transient.created", subject=None, data={})
    await publish(publisher, settings, encoded(e), "transient.created", message_id=e["id"])

    async def handled() -> bool:
        return len(calls) == outage + 1

    await eventually(handled, what="the event handled once the outage is over")
    await asyncio.sleep(0.3)
    assert calls == [e["id"]] * (outage + 1)
    assert await parked_count(channel, queue) == 0
