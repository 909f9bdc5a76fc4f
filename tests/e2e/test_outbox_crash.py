"""The outbox's promise, with a real kill: the auth process dies (SIGKILL, at the fault point between the
commit of a change and the publish of its event); restarted, it publishes the event, which an idempotent
consumer sees exactly once."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter

import asyncpg
import httpx
import stack as stack_module
from itsm_shared.db import asyncpg_dsn
from itsm_shared.testing import Listen, eventually

from .conftest import bearer

PASSWORD = "a perfectly fine password"


async def count(stack: stack_module.Stack, query: str, *args: object) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(stack.settings.database_url))
    try:
        return int(await connection.fetchval(query, *args))
    finally:
        await connection.close()


async def test_event_committed_before_a_kill_is_published_after_restart(
    stack: stack_module.Stack, http: httpx.AsyncClient, admin: str, listen: Listen
) -> None:
    probe = await listen("auth.user_created")
    # Rows auth has not published yet (the events of the tests before, a pass a SIGTERM cut short) would reach the
    # fault point before this test's change does: arm it once auth's outbox is empty.
    unpublished = "SELECT count(*) FROM auth.outbox WHERE published_at IS NULL"
    await eventually(lambda: count(stack, unpublished), lambda n: n == 0, timeout=30, what="auth's outbox drained")

    # Restart auth armed: it will SIGKILL itself when the relay is about to publish.
    stack.restart_service("auth", {"ITSM_FAULT_POINT": "outbox.before_publish"}, sig=signal.SIGTERM)
    stack.wait_routed("auth")
    username = f"crash{uuid.uuid4().hex[:8]}"
    created = await http.post(
        "/api/v1/auth/users", headers=bearer(admin), json={"username": username, "password": PASSWORD}
    )
    # The commit wakes the relay, which may reach the fault point before the response is sent, so the
    # answer can be lost with the process (the gateway's 502 or 503). What must hold: the change committed.
    assert created.status_code in (201, 502, 503), created.text
    assert stack.wait_exit("auth", timeout=30) == -signal.SIGKILL
    stored = "SELECT count(*) FROM auth.user_account WHERE username = $1"
    assert await count(stack, stored, username) == 1, "the change commits before the relay runs"
    await asyncio.sleep(2)  # nothing must arrive: there is no condition to wait for, only a time
    assert probe.messages == [], "the process died before publishing"

    stack.restart_service("auth")  # no fault point this time
    await probe.until(lambda p: p.messages, timeout=20, what="the event published after the restart")
    await asyncio.sleep(2)  # and no second copy of it
    # An idempotent consumer: count distinct event ids for this user.
    seen = Counter(e["id"] for e in probe.of(where=lambda e: e["data"].get("username") == username))
    assert len(seen) == 1, seen
    event_id = next(iter(seen))
    assert probe.messages[0].message_id == event_id
