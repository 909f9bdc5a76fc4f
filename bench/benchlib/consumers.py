"""The problem and audit consumers during and after a create load: their queues' ready messages (a passive queue
declare over AMQP: the management plugin is not enabled; a declare counts only messages not yet delivered, so the
up to `prefetch` messages a consumer holds unacknowledged are not in it) and what each has stored (rows of its own
tables), sampled every SAMPLE_EVERY s; from these, each consumer's figures for a run: the rate it consumed against
the rate events were published, its backlog and the backlog's trend, and when it had caught up."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

from benchlib.common import stack_module
from benchlib.figures import slope
from benchlib.scratch import plain_dsn
from benchlib.subscriber_events import Events
from benchlib.wrk import WrkResult

SAMPLE_EVERY = 0.5
GROWING = 0.05  # a backlog rising faster than this fraction of the create rate is growing

# What each consumer has stored, counted in its own tables (as the database superuser).
INCIDENTS_SQL = "SELECT count(*) FROM incident.incident"
CONSUMERS = {
    "problem": ("problem.incidents", "SELECT count(*) FROM problem.incident_ref"),
    "audit": ("audit.ingest", "SELECT count(*) FROM audit.audit_event WHERE type = 'itsm.incident.created'"),
}


# ---------------------------------------------------------------- queue depth and consumer progress


@dataclass
class Sample:
    at: float  # wall clock
    ready: dict[str, int | None]  # consumer -> ready messages in its queue (passive declare)
    stored: dict[str, int | None]  # consumer -> events it has stored
    incidents: int | None


class Observer:
    """Samples the consumers' queues (AMQP passive declare) and what they stored (SQL) every SAMPLE_EVERY s."""

    def __init__(self, settings: stack_module.StackSettings) -> None:
        self.settings = settings
        self.samples: list[Sample] = []
        self.failed: dict[str, str] = {}
        self._amqp: Any = None
        self._channel: Any = None
        self._db: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one connection each: the sampling task and the caller take turns
        self.backend_pid = 0

    async def start(self) -> None:
        import aio_pika
        import asyncpg

        self._amqp = await aio_pika.connect(self.settings.amqp_url)
        self._db = await asyncpg.connect(plain_dsn(self.settings.database_url))
        self.backend_pid = int(await self._db.fetchval("SELECT pg_backend_pid()"))
        self._task = asyncio.create_task(self._run())

    async def _ready(self, queue: str) -> int | None:
        try:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._amqp.channel()
            declared = await self._channel.declare_queue(self.settings.queue_prefix + queue, passive=True)
            return int(declared.declaration_result.message_count)
        except Exception as exc:
            self.failed.setdefault(f"queue {queue}", f"{type(exc).__name__}: {exc}")
            self._channel = None
            return None

    async def _count(self, what: str, sql: str) -> int | None:
        try:
            return int(await self._db.fetchval(sql))
        except Exception as exc:
            self.failed.setdefault(what, f"{type(exc).__name__}: {exc}")
            return None

    async def sample(self) -> Sample:
        async with self._lock:
            at = time.time()
            ready = {name: await self._ready(queue) for name, (queue, _) in CONSUMERS.items()}
            stored = {name: await self._count(f"{name} stored", sql) for name, (_, sql) in CONSUMERS.items()}
            incidents = await self._count("incidents", INCIDENTS_SQL)
            sample = Sample(at, ready, stored, incidents)
            self.samples.append(sample)
            return sample

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await self.sample()
            await asyncio.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - started)))

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._amqp is not None:
            await self._amqp.close()
        if self._db is not None:
            await self._db.close()


@dataclass
class ConsumerFigures:
    published_rate: float  # incident.created per second during the load, at the outside subscriber
    consumed_rate: float  # events stored per second during the load
    ready_max: int | None  # ready messages in its queue, most seen during the load
    ready_end: int | None  # ... at the end of the load
    backlog_start: float
    backlog_end: float
    slope: float  # backlog growth during the load, events per second
    caught_up: float  # seconds after the load stopped until it had stored every event (nan: never)
    series: str = ""  # backlog/ready once a second from the start of the load until caught up

    @property
    def growing(self) -> bool:
        return self.slope > GROWING * max(self.published_rate, 1.0)


def consumer_figures(
    observer: Observer, events: Events, name: str, w: WrkResult, done_at: float | None
) -> ConsumerFigures:
    """The figures of consumer `name` for the run `w`, which it had caught up with at `done_at` (None: never)."""
    load = observer.between(w.started, w.ended)
    seconds = max(w.ended - w.started, 1e-9)
    published = events.published_between(w.started, w.ended) / seconds
    stored = [(s.at, n) for s in load if (n := s.stored[name]) is not None]
    consumed = math.nan
    if len(stored) >= 2:
        (t0, n0), (t1, n1) = stored[0], stored[-1]
        consumed = (n1 - n0) / (t1 - t0) if t1 > t0 else math.nan
    # The backlog: events published so far (seen by the subscriber) minus events the consumer stored.
    trend = [(t, float(events.arrived_by(t) - n)) for t, n in stored]
    trend = [(t, b) for t, b in trend if t >= w.started + 1.0] or trend
    readies = [n for s in load if (n := s.ready[name]) is not None]
    return ConsumerFigures(
        published_rate=published,
        consumed_rate=consumed,
        ready_max=max(readies) if readies else None,
        ready_end=readies[-1] if readies else None,
        backlog_start=trend[0][1] if trend else math.nan,
        backlog_end=trend[-1][1] if trend else math.nan,
        slope=slope(trend),
        caught_up=done_at - w.ended if done_at is not None else math.nan,
        series=backlog_series(observer, events, name, w, done_at),
    )


def backlog_series(observer: Observer, events: Events, name: str, w: WrkResult, done_at: float | None) -> str:
    """`backlog/ready` once a second, during the load | after it, until caught up (at most 40 values)."""
    end = done_at if done_at is not None else (observer.samples[-1].at if observer.samples else w.ended)
    parts: list[str] = []
    next_at, after = w.started, False
    for sample in observer.between(w.started, end + 0.01):
        if sample.at < next_at or len(parts) >= 40:
            continue
        next_at = sample.at + 0.95
        if not after and sample.at > w.ended:
            parts.append("|")
            after = True
        stored = sample.stored[name]
        backlog = "?" if stored is None else str(events.arrived_by(sample.at) - stored)
        parts.append(f"{backlog}/{'?' if sample.ready[name] is None else sample.ready[name]}")
    return " ".join(parts)
