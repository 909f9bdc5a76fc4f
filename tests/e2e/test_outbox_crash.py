"""The outbox's promise, with a real kill: the auth process dies (SIGKILL, at the fault point between the
commit of a change and the publish of its event); restarted, it publishes the event, which an idempotent
consumer sees exactly once."""

from __future__ import annotations

import json
import signal
import uuid

import aio_pika
import httpx
import stack as stack_module

from .conftest import bearer, drain

PASSWORD = "a perfectly fine password"


async def test_event_committed_before_a_kill_is_published_after_restart(
    stack: stack_module.Stack,
    http: httpx.AsyncClient,
    admin: str,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    channel = await amqp.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(stack.settings.exchange, "auth.user_created")

    # Restart auth armed: it will SIGKILL itself when the relay is about to publish.
    stack.restart_service("auth", {"ITSM_FAULT_POINT": "outbox.before_publish"}, sig=signal.SIGTERM)
    stack.wait_routed("auth")
    username = f"crash{uuid.uuid4().hex[:8]}"
    created = await http.post(
        "/api/v1/auth/users", headers=bearer(admin), json={"username": username, "password": PASSWORD}
    )
    assert created.status_code == 201, "the change commits before the relay runs"
    assert stack.wait_exit("auth", timeout=30) == -signal.SIGKILL
    assert await drain(queue, timeout=2) == [], "the process died before publishing"

    stack.restart_service("auth")  # no fault point this time
    messages = await drain(queue, until=lambda got: len(got) >= 1, timeout=20)
    # An idempotent consumer: count distinct event ids for this user.
    seen = {}
    for message in messages + await drain(queue, timeout=2):
        event = json.loads(message.body)
        if event["data"].get("username") == username:
            seen.setdefault(event["id"], 0)
            seen[event["id"]] += 1
    assert len(seen) == 1, seen
    event_id = next(iter(seen))
    assert messages[0].message_id == event_id
    await channel.close()
