"""Group commit and grouped acknowledgements, for the batch consumers (`itsm_shared.batches`): the batch writer
hands up to `max_batch` items (or what came within `max_wait`) to one store call at a time, and the acker
acknowledges the longest run of settled deliveries of each channel with one `basic.ack(multiple)`."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aio_pika.abc import AbstractIncomingMessage

from itsm_shared import faults

log = logging.getLogger(__name__)

T = TypeVar("T")

# A fault point (`faults`): a batch committed, its messages not yet acknowledged.
AFTER_COMMIT = "batches.after_commit"


# ---------------------------------------------------------------- the batch writer


@dataclass(slots=True)
class _Pending(Generic[T]):
    item: T
    message: AbstractIncomingMessage
    arrived: float


class BatchWriter(Generic[T]):
    """Group commit: items are added without waiting; `store` gets up to `max_batch` of them (or what came
    within `max_wait` of the first) and returns one outcome each, committed; `settle` then gets the
    (message, outcome) pairs in the order the items were added. One batch at a time: the next fills meanwhile."""

    def __init__(
        self,
        store: Callable[[list[T]], Awaitable[list[object]]],
        settle: Callable[[list[tuple[AbstractIncomingMessage, object]]], Awaitable[None]],
        *,
        max_batch: int,
        max_wait: float,
    ) -> None:
        self._store = store
        self._settle = settle
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._pending: deque[_Pending[T]] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()

    def add(self, item: T, message: AbstractIncomingMessage) -> None:
        self._pending.append(_Pending(item, message, time.monotonic()))
        self._arrived.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()

    def __len__(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        while True:
            await self._arrived.wait()
            linger = self._pending[0].arrived + self.max_wait - time.monotonic()
            if len(self._pending) < self.max_batch and linger > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), linger)
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            if len(self._pending) < self.max_batch:
                self._full.clear()
            if not self._pending:
                self._arrived.clear()
            outcomes = await self._store([p.item for p in batch])
            faults.reach(AFTER_COMMIT)
            try:
                await self._settle([(p.message, o) for p, o in zip(batch, outcomes, strict=True)])
            except Exception:
                log.exception("settling a committed batch failed; its deliveries come back as duplicates")


# ---------------------------------------------------------------- acknowledgements, in order, many at once


@dataclass
class _ChannelTags:
    outstanding: deque[int] = field(default_factory=deque)  # delivery tags not yet acknowledged, ascending
    messages: dict[int, AbstractIncomingMessage] = field(default_factory=dict)
    settled: dict[int, bool] = field(default_factory=dict)  # tag -> may the multiple-ack name it


def _tag(message: AbstractIncomingMessage) -> int:
    tag = message.delivery_tag
    if tag is None:  # only a no-ack delivery has none, and the batch consumers acknowledge
        raise ValueError("delivery without a tag")
    return tag


class Acker:
    """A delivery is acknowledged only once it and every delivery before it on its channel are settled (applied,
    a duplicate, or parked), so an ack never covers a message still in flight. A delivery settled otherwise
    (returned to the queue) is settled with `acknowledge=False`: the run passes it, no ack names it. Delivery
    tags are per channel; a channel that closed takes its unacknowledged deliveries back to the queue."""

    def __init__(self) -> None:
        self._channels: dict[int, tuple[Any, _ChannelTags]] = {}
        self._lock = asyncio.Lock()

    def delivered(self, message: AbstractIncomingMessage) -> None:
        channel = message.channel
        tags = self._channels.setdefault(id(channel), (channel, _ChannelTags()))[1]
        tag = _tag(message)
        if tags.outstanding and tag < tags.outstanding[-1]:
            tags.outstanding.insert(bisect.bisect(tags.outstanding, tag), tag)
        else:
            tags.outstanding.append(tag)
        tags.messages[tag] = message

    def settle(self, message: AbstractIncomingMessage, *, acknowledge: bool = True) -> None:
        """Mark a delivery settled; `acknowledge=False` when it was settled otherwise (returned to the queue)."""
        for _, tags in self._channels.values():
            if tags.messages.get(_tag(message)) is message:
                tags.settled[_tag(message)] = acknowledge
                return

    async def flush(self) -> None:
        async with self._lock:  # acks leave in ascending order: a later multiple-ack never overtakes an earlier
            for key, (channel, tags) in list(self._channels.items()):
                if channel.is_closed:  # the broker has requeued what it had not been told about
                    del self._channels[key]
                    continue
                last: AbstractIncomingMessage | None = None
                while tags.outstanding and tags.outstanding[0] in tags.settled:
                    tag = tags.outstanding.popleft()
                    message = tags.messages.pop(tag)
                    if tags.settled.pop(tag):
                        last = message
                if last is None:
                    continue
                try:
                    await last.ack(multiple=True)
                except Exception as exc:
                    # The channel is gone: the broker requeues everything it had not been told about.
                    log.warning("acknowledgement failed", extra={"error": type(exc).__name__})
