"""An exclusive queue bound to the session's test exchange that collects incident.* events as they arrive.

The exchange is shared by every test of the session and the relay may publish a test's events late, so a
test always selects its own events by `subject` (the incident id) and waits for them with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
from itsm_shared.testing import parse_cloudevent


class Probe:
    def __init__(self, queue: aio_pika.abc.AbstractQueue) -> None:
        self.queue = queue
        self.events: list[dict[str, Any]] = []
        self.messages: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def drain(self) -> None:
        while (message := await self.queue.get(fail=False, no_ack=True)) is not None:
            self.messages.append(message)
            self.events.append(parse_cloudevent(message.body))

    def of(self, subject: Any, *types: str) -> list[dict[str, Any]]:
        """Events about `subject` so far (optionally only of the given short types, e.g. "updated")."""
        wanted = {f"itsm.incident.{t}" for t in types}
        return [e for e in self.events if e.get("subject") == str(subject) and (not types or e["type"] in wanted)]

    def message_of(self, event: dict[str, Any]) -> aio_pika.abc.AbstractIncomingMessage:
        return next(m for m, e in zip(self.messages, self.events, strict=True) if e["id"] == event["id"])

    async def expect(self, subject: Any, *types: str, timeout: float = 10) -> list[dict[str, Any]]:
        """Wait until the events about `subject` include `types` (with multiplicity); return all of them."""
        want = Counter(f"itsm.incident.{t}" for t in types)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await self.drain()
            got = self.of(subject)
            have = Counter(e["type"] for e in got)
            if all(have[t] >= n for t, n in want.items()):
                return got
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"waited {timeout}s for {dict(want)} about {subject}; got {dict(have)}")
            await asyncio.sleep(0.05)

    async def one(self, subject: Any, type: str, *, sequence: int | None = None, timeout: float = 10) -> dict[str, Any]:
        """Wait for the event of `type` about `subject` (with `sequence`, when given) and return it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await self.drain()
            found = [e for e in self.of(subject, type) if sequence is None or e.get("sequence") == sequence]
            if found:
                return found[0]
            if asyncio.get_running_loop().time() > deadline:
                seen = [(e["type"], e.get("sequence")) for e in self.of(subject)]
                raise AssertionError(f"waited {timeout}s for {type} #{sequence} about {subject}; got {seen}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def listening(amqp: aio_pika.abc.AbstractRobustConnection, exchange: str) -> AsyncIterator[Probe]:
    """Bind before acting: the app fixture has declared `exchange` already."""
    channel = await amqp.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(await channel.get_exchange(exchange), "incident.#")
    try:
        yield Probe(queue)
    finally:
        await channel.close()
