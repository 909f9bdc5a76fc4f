"""Group commit and grouped acknowledgements for the ingest: the batch writer stores up to `audit_batch_size`
events (or what came within `audit_batch_wait_ms`) in one transaction, retrying the same batch while the
database is away; once it committed, the acker acknowledges the longest run of settled deliveries of each
channel with one `basic.ack(multiple)`."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from itsm_shared.db import transaction
from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from audit.ingest import Incoming, Outcome, store_batch

log = logging.getLogger(__name__)

RETRIES = Counter("itsm_audit_batch_retries_total", "Batch writes retried after a failure")
BATCH_SIZE = Histogram("itsm_audit_batch_size", "Events per stored batch", buckets=(1, 5, 10, 25, 50, 100, 250, 500))

StoreBatch = Callable[[Sequence[Incoming]], Awaitable[list[Outcome]]]
Settle = Callable[[list[tuple[Any, Outcome]]], Awaitable[None]]


def committing(sessions: async_sessionmaker[AsyncSession]) -> StoreBatch:
    """The writer's unit of work: each batch in one transaction of the seam, committed before it returns, so
    whatever the writer settles (acknowledges) is on the chain."""

    async def store(batch: Sequence[Incoming]) -> list[Outcome]:
        async with transaction(sessions) as session:
            return await store_batch(session, batch)

    return store


# ---------------------------------------------------------------- the batch writer


@dataclass(slots=True)
class _Pending:
    item: Incoming
    token: Any  # whatever the caller settles by (the delivery)
    arrived: float


class BatchWriter:
    """Group commit for the chain: items are added without waiting; each committed batch is handed to
    `settle` with the outcome of every item, in the order they were added."""

    def __init__(
        self, store: StoreBatch, settle: Settle, *, max_batch: int, max_wait: float, retry_max_seconds: float = 5.0
    ) -> None:
        self._store = store
        self._settle = settle
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.retry_max_seconds = retry_max_seconds
        self._pending: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()

    def add(self, item: Incoming, token: Any) -> None:
        self._pending.append(_Pending(item, token, time.monotonic()))
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
            outcomes = await self._write([p.item for p in batch])
            try:
                await self._settle([(p.token, o) for p, o in zip(batch, outcomes, strict=True)])
            except Exception:
                log.exception("settling a stored batch failed; its deliveries come back as duplicates")

    async def _write(self, items: list[Incoming]) -> list[Outcome]:
        delay = 0.1
        while True:
            try:
                outcomes = await self._store(items)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever failed, the batch is still whole and unacknowledged: try it again, never drop it.
                RETRIES.inc()
                log.warning(
                    "audit batch not stored, retrying",
                    extra={"error": f"{type(exc).__name__}: {str(exc)[:300]}", "events": len(items), "delay": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)
                continue
            BATCH_SIZE.observe(len(items))
            return outcomes


# ---------------------------------------------------------------- acknowledgements, in order, many at once


@dataclass
class _ChannelTags:
    outstanding: deque[int] = field(default_factory=deque)  # delivery tags not yet acknowledged, ascending
    messages: dict[int, AbstractIncomingMessage] = field(default_factory=dict)
    settled: dict[int, bool] = field(default_factory=dict)  # tag -> may the multiple-ack name it


def _tag(message: AbstractIncomingMessage) -> int:
    tag = message.delivery_tag
    if tag is None:  # only a no-ack delivery has none, and the ingest channel acknowledges
        raise ValueError("delivery without a tag")
    return tag


class Acker:
    """`basic.ack(multiple=True)` for the longest prefix of settled deliveries of each channel: one frame per
    batch instead of one per message. A delivery is acknowledged only once it and every delivery before it
    on its channel are settled (stored, a duplicate, or parked), so an ack never covers a message still in
    flight. Delivery tags are per channel; a channel that closed takes its deliveries back to the queue."""

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
