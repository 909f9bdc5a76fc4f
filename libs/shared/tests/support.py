"""Helpers of the shared-mechanism tests: polling with a deadline, probe queues, committed appends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from itsm_shared.events import CloudEvent
from itsm_shared.outbox import append
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

SERVICE = "shared"  # events below come from /itsm/shared; relays listen on itsm_outbox_shared
T = TypeVar("T")
Handler = Callable[[CloudEvent[dict[str, Any]]], Awaitable[None]]


async def eventually(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something truthy; fail with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)


class Probe:
    """An exclusive, auto-delete classic queue bound to the events exchange, collecting what arrives."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue
        self.messages: list[AbstractIncomingMessage] = []

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)

    def ids(self) -> list[str]:
        return [m.message_id or "" for m in self.messages]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[AbstractIncomingMessage]:
        async def enough() -> bool:
            return len(self.messages) >= count

        await eventually(enough, timeout=timeout, what=f"{count} messages on {self.queue.name}")
        return self.messages


async def append_committed(sessions: async_sessionmaker[AsyncSession], *events: dict[str, Any]) -> None:
    async with sessions() as session, session.begin():
        for event in events:
            await append(session, event)
