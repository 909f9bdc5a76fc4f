"""Benchmark: the create pipeline, its events and consumers, and the list of 50, against a bare baseline.

Measures the figures of issue 10 in one sitting, each beside the bare baseline measured in the same run:

1. POST /api/v1/incidents through the gateway and directly on the incident service's port, against the bare
   insert (bench/benchlib/bare_app.py: one FastAPI process, one asyncpg pool, one INSERT ... RETURNING per
   POST, same uvicorn flags, no auth, no events): successful responses per second, p50, p99, errors
   (responses with a status above 399 and socket errors);
2. the event lag while saturated and at half of the saturated rate: event `time` -> arrival of
   `incident.created` at an outside subscriber (bench/benchlib/subscriber.py: a plain aio_pika consumer in
   its own process, its own queue bound to the stack's exchange), p50/p99 over every event of the runs;
3. GET /api/v1/incidents?limit=50 through the gateway against the bare SELECT of 50 rows ordered by an index
   (`GET /incidents?limit=50` of the bare app): req/s, p99, ratio;
4. the problem and audit consumers during and after each create load: the ready messages of their queues
   (`problem.incidents`, `audit.ingest`) from a passive queue declare over AMQP (the management plugin is
   not enabled; a declare counts only messages not yet delivered, so the up to `prefetch` messages a consumer
   holds unacknowledged are not in it), and what each consumer has stored (rows of its own tables:
   `problem.incident_ref`, `audit.audit_event` of type `itsm.incident.created`), sampled every 0.5 s. From
   these: the rate each consumed during the load against the rate events were published, the backlog
   (events published so far, as the outside subscriber saw them, minus events the consumer stored) and its
   trend over the load (least-squares slope; "growing" when it rises faster than 5 % of the create rate),
   and how long after the load stopped each had caught up;
5. CPU milliseconds per create of each process, from /proc (utime + stime of every thread, see
   benchlib/common.py CpuMeter): incident, auth, problem, audit, change, Traefik, the PostgreSQL backends of
   the run's database plus the server's own processes, RabbitMQ's beam.smp, the bare app, wrk. For the stack
   the window is the load plus the time until every consumer caught up, so the consumers' work for those
   creates is in it, divided by the incidents created (rows: wrk's successes plus the requests still in
   flight when it stopped); for the bare app the window is the load, divided by wrk's successes.

The stack is the one `make run` starts (deploy/stack.py `Stack`: every service, problem and audit consuming,
Traefik with deploy/traefik's configuration and its access log) on an isolated database, exchange and ports,
with two settings lifted through the environment because one client sends all the load: the gateway's API
rate limit (ITSM_API_RATE_LIMIT) and its per-client in-flight cap (ITSM_API_MAX_INFLIGHT). The login limit
stays as under `make run`; the bench logs in on the auth service's own port.

Load: wrk (Debian package, C) with bench/benchlib/wrk.lua, `wrk -t2 -c32 -d8s --latency --timeout 10s`,
POST bodies `{"title","description","impact":2,"urgency":2,"category","configuration_item"}` and the
Authorization header of an `agent` user (created through the auth API). Per round: bare create, gateway
create, direct create, bare list, gateway list, after a warm-up of 2 s each; 2 rounds by default; each create
on the stack is followed by waiting until the subscriber and both consumers have every event, so no run starts
with the previous one's backlog. Rates are pooled over the rounds (successes / seconds), p50/p99 are the
worst round's (wrk reports percentiles per run), the event lags are pooled over every event.

The half-rate runs (the event lag without saturation): half of the gateway create rate just measured, sent
open-loop by the same wrk with a `delay()` in wrk.lua that keeps each thread on a fixed schedule (one request
every threads/rate seconds, read from CLOCK_MONOTONIC through LuaJIT's ffi). wrk2 is not packaged; wrk with a
schedule costs as little as the saturated runs' load generator, where a Python client would take CPU from the
services it measures (bench/incident_create.py's former httpx generator saw the bare baseline at 289 req/s
instead of about 2,500).

Prints each run, then details, then the summary table (figure | this project | bare baseline | ratio | target |
met?) with the date, machine size and load average; the table is also kept in build/bench/ for `make bench`.
Everything started is stopped and every scratch database and exchange removed, also on failure or Ctrl-C.

    uv run python bench/incident_create.py [--duration 8] [--rounds 2] [--connections 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.common import (
    ALL_QUEUES,
    BENCH_DIR,
    INTERRUPTS,
    NOT_OURS,
    OTHER,
    POSTGRES,
    RABBITMQ,
    CpuMeter,
    CpuSnapshot,
    Summary,
    agent_token,
    bench_settings,
    cleanup,
    cores_line,
    create_scratch_database,
    drop_scratch_database,
    fmt_ratio,
    ignore_signals,
    is_ours,
    machine_line,
    ms,
    password_token,
    percentile,
    plain_dsn,
    processes,
    ratio,
    remove_stack_topology,
    services,
    signals_as_interrupt,
    stack_module,
    start_bare_app,
)
from benchlib.wrk import WrkResult, run_wrk, wrk_version
from gateway import DEFAULT_LOGIN_RATE_LIMIT  # deploy/gateway.py (deploy/ is on sys.path, see benchlib.common)

RATE_LIMIT = 1_000_000  # requests per second per client: effectively none
MAX_INFLIGHT = 100_000
SAMPLE_EVERY = 0.5
TOKEN_MAX_AGE = 600.0  # access tokens live 15 minutes

# The targets of issue 10.
TARGET_CREATE_RATIO = 0.2
TARGET_CREATE_P99 = 0.150
TARGET_LAG_P99_SATURATED = 0.100
TARGET_LAG_P99_HALF = 0.025
TARGET_LIST_RATIO = 0.3
TARGET_LIST_P99 = 0.100
TARGET_INCIDENT_CPU_MS = 1.5
GROWING = 0.05  # a backlog rising faster than this fraction of the create rate is growing

# What each consumer has stored, counted in its own tables (as the database superuser).
INCIDENTS_SQL = "SELECT count(*) FROM incident.incident"
CONSUMERS = {
    "problem": ("problem.incidents", "SELECT count(*) FROM problem.incident_ref"),
    "audit": ("audit.ingest", "SELECT count(*) FROM audit.audit_event WHERE type = 'itsm.incident.created'"),
}
SUBSCRIBER = "subscriber"
WRK = "wrk (load generator)"
LOAD_SIDE = {WRK, "outside subscriber", "bench (this process)"}  # ours, but not the system under test


# ---------------------------------------------------------------- the outside subscriber's events


class Events:
    """Follows the subscriber's file: (arrival, event time) of every incident.created, in arrival order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.arrivals: list[float] = []
        self.times: list[float] = []

    def read(self) -> int:
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as file:
            file.seek(self.offset)
            chunk = file.read()
            end = chunk.rfind(b"\n") + 1
            self.offset += end
            for line in chunk[:end].decode().splitlines():
                arrived, when, _ = line.split(" ", 2)
                self.arrivals.append(float(arrived))
                self.times.append(float(when))
        return len(self.arrivals)

    def arrived_by(self, at: float) -> int:
        return bisect.bisect_right(self.arrivals, at)

    def lags(self, start: float, end: float) -> list[float]:
        """Lag of every event whose `time` is in [start, end)."""
        return [a - t for a, t in zip(self.arrivals, self.times, strict=True) if start <= t < end]

    def published_between(self, start: float, end: float) -> int:
        return self.arrived_by(end) - self.arrived_by(start)


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


# ---------------------------------------------------------------- runs


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


@dataclass
class Run:
    kind: str  # create, list
    target: str  # gateway, direct, bare
    label: str
    wrk: WrkResult
    cpu: dict[str, float]  # CPU seconds per group over the run's window
    cores: str
    rate_asked: float = 0.0
    lags: list[float] = field(default_factory=list)
    created: int = 0  # incidents the run created (rows)
    consumers: dict[str, ConsumerFigures] = field(default_factory=dict)
    caught_up: float = math.nan  # seconds after the load until the subscriber and every consumer had all
    relay_caught_up: float = math.nan  # seconds after the load until the subscriber had every event

    @property
    def completed(self) -> int:
        """Requests the server completed in the CPU window: for a create on the stack, the incidents it created
        (wrk does not count the up to `connections` requests still in flight when it stops, but their rows,
        events and consumers' work are in the window); otherwise wrk's successful responses."""
        return self.created or self.wrk.ok

    def line(self) -> str:
        w = self.wrk
        paced = f" (paced at {self.rate_asked:.0f}/s)" if self.rate_asked else ""
        return (
            f"  {self.label:<34} {w.rate:8.1f} req/s{paced}  p50 {ms(w.latency('p50')):>9}"
            f"  p99 {ms(w.latency('p99')):>9}  ok {w.ok:>6}  errors: {w.error_text()}"
        )


class Bench:
    def __init__(self, stack: stack_module.Stack, bare_url: str, bare_pid: int, bare_db: str, args: Any) -> None:
        self.stack = stack
        self.s = stack.settings
        self.bare_url = bare_url
        self.bare_db = bare_db
        self.args = args
        self.work_dir = Path(tempfile.mkdtemp(prefix="wrk-", dir=self.s.run_dir))
        self.events = Events(self.work_dir / "events.txt")
        self.observer = Observer(self.s)
        groups = {name: p.pid for name, p in stack.processes.items() if p.pid is not None}
        groups["bare app"] = bare_pid
        self.meter = CpuMeter(
            admin_dsn=plain_dsn(processes.with_database(self.s.admin_database_url, "postgres")),
            groups=groups,
            pids={"bench (this process)": {os.getpid()}},
        )
        self.subscriber: asyncio.subprocess.Process | None = None
        self.token = ""
        self.token_at = 0.0
        self.password = ""
        self.runs: list[Run] = []

    # -- setup --------------------------------------------------------------------------------------

    async def start(self) -> None:
        assert self.s.bootstrap_admin_password
        auth = self.s.service_url("auth")
        self.token, self.password = await agent_token(auth, self.s.bootstrap_admin_password)
        self.token_at = time.monotonic()
        self.subscriber = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BENCH_DIR / "benchlib" / "subscriber.py"),
            self.s.amqp_url,
            self.s.exchange,
            "incident.created",
            str(self.events.path),
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=processes._die_with_parent,
        )
        assert self.subscriber.stdout is not None
        line = await asyncio.wait_for(self.subscriber.stdout.readline(), 60)
        if line.strip() != b"READY":
            raise RuntimeError(f"the outside subscriber did not start: {line!r}")
        self.meter.pids["outside subscriber"] = {self.subscriber.pid}
        await self.observer.start()
        self.meter.exclude.add(self.observer.backend_pid)

    async def close(self) -> None:
        await self.observer.close()
        await self.meter.close()
        if self.subscriber is not None and self.subscriber.returncode is None:
            self.subscriber.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.subscriber.wait(), 10)

    async def authorization(self) -> str:
        if time.monotonic() - self.token_at > TOKEN_MAX_AGE:
            import httpx

            async with httpx.AsyncClient(base_url=self.s.service_url("auth"), timeout=30) as client:
                self.token = await password_token(client, "bench-agent", self.password)
            self.token_at = time.monotonic()
        return f"Bearer {self.token}"

    def url(self, kind: str, target: str) -> str:
        prefix = services.get("incident").api_prefix
        base = {"gateway": self.s.gateway_url, "direct": self.s.service_url("incident")}
        if target == "bare":
            return f"{self.bare_url}/incidents" + ("?limit=50" if kind == "list" else "")
        return f"{base[target]}{prefix}" + ("?limit=50" if kind == "list" else "")

    # -- one run ------------------------------------------------------------------------------------

    async def run(self, kind: str, target: str, *, duration: float, rate: float = 0.0, record: bool = True) -> Run:
        label = f"{kind} {target}" + (" half rate" if rate else "")
        print(f"running: {label}{' (warm-up)' if not record else ''} ...", flush=True)
        self.meter.databases = {self.bare_db} if target == "bare" else {processes.database_of(self.s.database_url)}
        snapshots: list[CpuSnapshot] = []

        async def started(pid: int) -> None:
            snapshots.append(await self.meter.snapshot())

        before = await self.observer.sample()
        result = await run_wrk(
            self.url(kind, target),
            method="POST" if kind == "create" else "GET",
            authorization=None if target == "bare" else await self.authorization(),
            threads=self.args.threads,
            connections=self.args.connections,
            duration=duration,
            rate=rate,
            work_dir=self.work_dir,
            name=f"{label}-{len(self.runs)}-{'run' if record else 'warmup'}",
            on_start=started,
        )
        load_end = await self.meter.snapshot()
        run = Run(kind, target, label, result, {}, cores_line(snapshots[0], load_end), rate_asked=rate)
        end = load_end
        if kind == "create" and target != "bare":
            end = await self.catch_up(run, before)
        run.cpu = CpuMeter.seconds(snapshots[0], end) | {WRK: result.cpu_seconds}
        if record:
            self.runs.append(run)
        print(run.line(), flush=True)
        if kind == "create" and target != "bare":
            print(
                f"  {'':<34} lag p50 {ms(percentile(run.lags, 50))} p99 {ms(percentile(run.lags, 99))} over"
                f" {len(run.lags)} events; after the load: every event out {ms(run.relay_caught_up)},"
                f" consumers caught up {ms(run.caught_up)}",
                flush=True,
            )
        return run

    async def catch_up(self, run: Run, before: Sample) -> CpuSnapshot:
        """Wait until the outside subscriber and both consumers have every incident created so far; fill in the
        run's event lags and consumer figures. Returns the CPU snapshot taken at that moment."""
        w = run.wrk
        deadline = time.monotonic() + self.args.drain_timeout
        done_at: dict[str, float] = {}
        while True:
            sample = await self.observer.sample()
            arrived = self.events.read()
            total = sample.incidents if sample.incidents is not None else arrived
            if arrived >= total:
                done_at.setdefault(SUBSCRIBER, sample.at)
            for name in CONSUMERS:
                stored, ready = sample.stored[name], sample.ready[name]
                if (stored is None or stored >= total) and not ready:
                    done_at.setdefault(name, sample.at)
            if len(done_at) == len(CONSUMERS) + 1:
                break
            if time.monotonic() > deadline:
                missing = ", ".join(n for n in (SUBSCRIBER, *CONSUMERS) if n not in done_at)
                print(f"  not caught up {self.args.drain_timeout:.0f} s after the load: {missing}", flush=True)
                break
            await asyncio.sleep(0.25)
        end = await self.meter.snapshot()
        self.events.read()
        if before.incidents is not None and sample.incidents is not None:
            run.created = sample.incidents - before.incidents
        run.caught_up = max(done_at.values()) - w.ended if len(done_at) == len(CONSUMERS) + 1 else math.nan
        run.relay_caught_up = done_at[SUBSCRIBER] - w.ended if SUBSCRIBER in done_at else math.nan
        run.lags = self.events.lags(w.started, sample.at)
        for name in CONSUMERS:
            run.consumers[name] = self.consumer_figures(name, w, done_at.get(name))
        return end

    def consumer_figures(self, name: str, w: WrkResult, done_at: float | None) -> ConsumerFigures:
        load = self.observer.between(w.started, w.ended)
        seconds = max(w.ended - w.started, 1e-9)
        published = self.events.published_between(w.started, w.ended) / seconds
        stored = [(s.at, n) for s in load if (n := s.stored[name]) is not None]
        consumed = math.nan
        if len(stored) >= 2:
            (t0, n0), (t1, n1) = stored[0], stored[-1]
            consumed = (n1 - n0) / (t1 - t0) if t1 > t0 else math.nan
        # The backlog: events published so far (seen by the subscriber) minus events the consumer stored.
        trend = [(t, float(self.events.arrived_by(t) - n)) for t, n in stored]
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
            series=self.series(name, w, done_at),
        )

    def series(self, name: str, w: WrkResult, done_at: float | None) -> str:
        """`backlog/ready` once a second, during the load | after it, until caught up (at most 40 values)."""
        end = done_at if done_at is not None else (self.observer.samples[-1].at if self.observer.samples else w.ended)
        parts: list[str] = []
        next_at, after = w.started, False
        for sample in self.observer.between(w.started, end + 0.01):
            if sample.at < next_at or len(parts) >= 40:
                continue
            next_at = sample.at + 0.95
            if not after and sample.at > w.ended:
                parts.append("|")
                after = True
            stored = sample.stored[name]
            backlog = "?" if stored is None else str(self.events.arrived_by(sample.at) - stored)
            parts.append(f"{backlog}/{'?' if sample.ready[name] is None else sample.ready[name]}")
        return " ".join(parts)

    # -- the plan -----------------------------------------------------------------------------------

    async def benchmark(self) -> None:
        a = self.args
        plan = [("create", "bare"), ("create", "gateway"), ("create", "direct"), ("list", "bare"), ("list", "gateway")]
        for kind, target in plan:
            await self.run(kind, target, duration=a.warmup, record=False)
        for round_number in range(1, a.rounds + 1):
            print(f"== round {round_number} of {a.rounds} ==", flush=True)
            for kind, target in plan:
                await self.run(kind, target, duration=a.duration)
                await asyncio.sleep(1.0)
        gateway = [r for r in self.runs if r.kind == "create" and r.target == "gateway"]
        half = 0.5 * sum(r.wrk.ok for r in gateway) / sum(r.wrk.seconds for r in gateway)
        print(f"== half rate: {half:.1f} req/s through the gateway, open loop (wrk.lua delay()) ==", flush=True)
        for _ in range(a.rounds):
            await self.run("create", "gateway", duration=a.duration, rate=half)
            await asyncio.sleep(1.0)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (time, value) points; 0 with fewer than 3."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else 0.0


# ---------------------------------------------------------------- report


@dataclass
class Pooled:
    runs: list[Run]

    @property
    def ok(self) -> int:
        return sum(r.wrk.ok for r in self.runs)

    @property
    def rate(self) -> float:
        seconds = sum(r.wrk.seconds for r in self.runs)
        return self.ok / seconds if seconds else math.nan

    def worst(self, name: str) -> float:
        return max((r.wrk.latency(name) for r in self.runs), default=math.nan)

    @property
    def errors(self) -> int:
        return sum(r.wrk.errors for r in self.runs)

    def error_text(self) -> str:
        return "; ".join(r.wrk.error_text() for r in self.runs)

    @property
    def lags(self) -> list[float]:
        return [lag for r in self.runs for lag in r.lags]

    def cpu_ms(self, group: str) -> float:
        completed = sum(r.completed for r in self.runs)
        return 1000 * sum(r.cpu.get(group, 0.0) for r in self.runs) / completed if completed else math.nan

    def groups(self) -> list[str]:
        """Our groups, busiest first."""
        names = {g for run in self.runs for g in run.cpu if is_ours(g)}
        return sorted(names, key=self.cpu_ms, reverse=True)

    def others(self, top: int = 4) -> list[str]:
        names = {g for run in self.runs for g in run.cpu if g.startswith(OTHER)}
        return sorted(names, key=self.cpu_ms, reverse=True)[:top]


def report(bench: Bench, summary: Summary) -> None:
    runs = bench.runs

    def pooled(kind: str, target: str, paced: bool = False) -> Pooled:
        return Pooled([r for r in runs if r.kind == kind and r.target == target and bool(r.rate_asked) == paced])

    create_bare, create_gw, create_direct = (
        pooled("create", "bare"),
        pooled("create", "gateway"),
        pooled("create", "direct"),
    )
    list_bare, list_gw = pooled("list", "bare"), pooled("list", "gateway")
    half = pooled("create", "gateway", paced=True)

    print()
    print("== every run ==")
    for run in runs:
        print(run.line())
        print(f"  {'':<34} {run.cores} (load window)")
    print()
    print("== event lag, event time -> incident.created at the outside subscriber ==")
    for name, p in (
        ("saturated, gateway", create_gw),
        ("saturated, direct", create_direct),
        ("half rate, gateway", half),
    ):
        lags = p.lags
        created = sum(r.created for r in p.runs)
        print(
            f"  {name:<22} p50 {ms(percentile(lags, 50)):>9}  p99 {ms(percentile(lags, 99)):>9}"
            f"  max {ms(max(lags, default=math.nan)):>9}  events {len(lags)} of {created} incidents created"
        )
    print()
    print("== consumers during each create load and after it ==")
    print("   published: incident.created/s at the outside subscriber; consumed: events stored/s; ready: messages")
    print("   not yet delivered (passive declare); backlog: published minus stored; caught up: after the load")
    print("   (a consumer holds up to its prefetch unacknowledged: in the backlog, not in ready)")
    for run in runs:
        if not run.consumers:
            continue
        print(f"  {run.label}:")
        for name, c in run.consumers.items():
            print(
                f"    {name:<8} published {c.published_rate:7.1f}/s  consumed {c.consumed_rate:7.1f}/s"
                f"  ready max {c.ready_max} end {c.ready_end}  backlog {c.backlog_start:.0f} -> {c.backlog_end:.0f}"
                f" ({c.slope:+.1f}/s, {'GROWING' if c.growing else 'steady'})  caught up {ms(c.caught_up)}"
            )
            print(f"    {'':<8} backlog/ready every second, during the load | after: {c.series}")
    print()
    print("== CPU ms per successful request (stack: load + catching up; bare: load) ==")
    for name, p in (
        ("create gateway", create_gw),
        ("create direct", create_direct),
        ("create half rate", half),
        ("create bare", create_bare),
        ("list gateway", list_gw),
        ("list bare", list_bare),
    ):
        parts = [f"{g} {p.cpu_ms(g):.2f}" for g in p.groups() if p.cpu_ms(g) >= 0.005]
        others = [f"{g[len(OTHER) :]} {p.cpu_ms(g):.2f}" for g in p.others() if p.cpu_ms(g) >= 0.05]
        print(
            f"  {name:<17} "
            + ", ".join(parts)
            + f"; kernel interrupts {p.cpu_ms(INTERRUPTS):.2f}; not ours {p.cpu_ms(NOT_OURS):.2f}"
            + (f" ({', '.join(others)})" if others else "")
        )
    if bench.observer.failed:
        print()
        for what, error in bench.observer.failed.items():
            print(f"  note: could not read {what}: {error}")

    # -- the summary table -------------------------------------------------------------------------
    table(bench, summary, create_bare, create_gw, create_direct, list_bare, list_gw, half)


def table(
    bench: Bench,
    summary: Summary,
    create_bare: Pooled,
    create_gw: Pooled,
    create_direct: Pooled,
    list_bare: Pooled,
    list_gw: Pooled,
    half: Pooled,
) -> None:
    """The rows of the summary: the figures of issue 10, each with its baseline, ratio and target."""

    def lat(p: Pooled) -> str:
        return f"p50 {ms(p.worst('p50'))}, p99 {ms(p.worst('p99'))}"

    def times(value: float, baseline: float) -> str:
        """How many times the baseline's (for latencies and CPU, where more is worse)."""
        r = ratio(value, baseline)
        return "n/a" if math.isnan(r) else f"{r:.1f}x the bare"

    conn = bench.args.connections
    r = ratio(create_gw.rate, create_bare.rate)
    summary.add(
        f"POST /api/v1/incidents via gateway, req/s ({conn} conn.)",
        f"{create_gw.rate:.1f}",
        f"{create_bare.rate:.1f}",
        fmt_ratio(r),
        f"≥ {TARGET_CREATE_RATIO}x",
        r >= TARGET_CREATE_RATIO,
    )
    p99 = create_gw.worst("p99")
    summary.add(
        "POST via gateway, latency",
        lat(create_gw),
        lat(create_bare),
        "p99 " + times(p99, create_bare.worst("p99")),
        f"p99 ≤ {ms(TARGET_CREATE_P99)}",
        p99 <= TARGET_CREATE_P99,
    )
    summary.add(
        "POST via gateway, errors (non-2xx + socket)",
        str(create_gw.errors),
        str(create_bare.errors),
        target="0",
        met=create_gw.errors == 0,
    )
    summary.add(
        "POST direct on the incident port, req/s",
        f"{create_direct.rate:.1f}",
        f"{create_bare.rate:.1f}",
        fmt_ratio(ratio(create_direct.rate, create_bare.rate)),
    )
    summary.add(
        "POST direct, latency; errors",
        f"{lat(create_direct)}; errors {create_direct.errors}",
        f"{lat(create_bare)}; errors {create_bare.errors}",
        "p99 " + times(create_direct.worst("p99"), create_bare.worst("p99")),
    )
    lag99 = percentile(create_gw.lags, 99)
    summary.add(
        "event lag while saturated (via gateway): event time → subscriber",
        f"p50 {ms(percentile(create_gw.lags, 50))}, p99 {ms(lag99)}",
        "n/a (no events)",
        target=f"p99 ≤ {ms(TARGET_LAG_P99_SATURATED)}",
        met=lag99 <= TARGET_LAG_P99_SATURATED,
    )
    half99 = percentile(half.lags, 99)
    asked = half.runs[0].rate_asked if half.runs else math.nan
    summary.add(
        f"event lag at half rate ({asked:.0f} req/s asked, {half.rate:.0f} done)",
        f"p50 {ms(percentile(half.lags, 50))}, p99 {ms(half99)}",
        "n/a (no events)",
        target=f"p99 ≤ {ms(TARGET_LAG_P99_HALF)}",
        met=half99 <= TARGET_LAG_P99_HALF,
    )
    for name in CONSUMERS:
        for label, p in (("saturated", create_gw), ("half rate", half)):
            figures = [run.consumers[name] for run in p.runs if name in run.consumers]
            if not figures:
                continue
            grew = any(c.growing for c in figures)
            consumed = sum(c.consumed_rate for c in figures) / len(figures)
            published = sum(c.published_rate for c in figures) / len(figures)
            text = (
                f"stored {consumed:.0f}/s of {published:.0f}/s published; backlog trend"
                f" {max(c.slope for c in figures):+.0f}/s, {max(c.backlog_end for c in figures):.0f} at the end;"
                f" caught up {ms(max(c.caught_up for c in figures))} after"
            )
            summary.add(f"{name} consumer, {label} load", text, target="backlog not growing", met=not grew)
    summary.add(
        "after the saturated load: every event out / both consumers drained",
        f"{ms(max((r.relay_caught_up for r in create_gw.runs), default=math.nan))}"
        f" / {ms(max((r.caught_up for r in create_gw.runs), default=math.nan))}",
    )
    r = ratio(list_gw.rate, list_bare.rate)
    summary.add(
        "GET /api/v1/incidents?limit=50 via gateway, req/s",
        f"{list_gw.rate:.1f}",
        f"{list_bare.rate:.1f}",
        fmt_ratio(r),
        f"≥ {TARGET_LIST_RATIO}x",
        r >= TARGET_LIST_RATIO,
    )
    p99 = list_gw.worst("p99")
    summary.add(
        "list of 50 via gateway, latency",
        lat(list_gw) + (f"; errors {list_gw.errors}" if list_gw.errors else ""),
        lat(list_bare),
        "p99 " + times(p99, list_bare.worst("p99")),
        f"p99 ≤ {ms(TARGET_LIST_P99)}",
        p99 <= TARGET_LIST_P99 and list_gw.errors == 0,
    )
    incident, bare_app = create_gw.cpu_ms("incident"), create_bare.cpu_ms("bare app")
    summary.add(
        "CPU ms per create: incident (baseline: the bare app)",
        f"{incident:.2f}",
        f"{bare_app:.2f}",
        times(incident, bare_app),
        f"≤ {TARGET_INCIDENT_CPU_MS}",
        incident <= TARGET_INCIDENT_CPU_MS,
    )
    # Every other process of the stack (services, Traefik, PostgreSQL, RabbitMQ), busiest first.
    for group in [g for g in create_gw.groups() if g not in {"incident", "bare app", *LOAD_SIDE}]:
        value = create_gw.cpu_ms(group)
        if group == POSTGRES:
            base = create_bare.cpu_ms(group)
            summary.add(f"CPU ms per create: {group}", f"{value:.2f}", f"{base:.2f}", times(value, base))
        else:
            summary.add(f"CPU ms per create: {group}", f"{value:.2f}", "—" if group != RABBITMQ else "0 (none)")
    stack_total = sum(create_gw.cpu_ms(g) for g in create_gw.groups() if g not in LOAD_SIDE | {"bare app"})
    bare_total = create_bare.cpu_ms(POSTGRES) + bare_app
    summary.add(
        "CPU ms per create, all of the above (bare: app + PostgreSQL)",
        f"{stack_total:.2f}",
        f"{bare_total:.2f}",
        times(stack_total, bare_total),
    )
    summary.add(
        "CPU ms per create: load generator (wrk) / kernel interrupts / not ours",
        f"{create_gw.cpu_ms(WRK):.2f} / {create_gw.cpu_ms(INTERRUPTS):.2f} / {create_gw.cpu_ms(NOT_OURS):.2f}",
        f"{create_bare.cpu_ms(WRK):.2f} / {create_bare.cpu_ms(INTERRUPTS):.2f} / {create_bare.cpu_ms(NOT_OURS):.2f}",
    )
    summary.notes += [
        "",
        f"Stack as `make run` starts it, every service, problem and audit consuming; gateway API rate limit lifted"
        f" to {RATE_LIMIT} req/s (ITSM_API_RATE_LIMIT) and in-flight cap to {MAX_INFLIGHT} (ITSM_API_MAX_INFLIGHT).",
        f"Load: {wrk_version()}, -t{bench.args.threads} -c{conn} -d{bench.args.duration:g}s, {bench.args.rounds}"
        " rounds alternating bare/stack; rates pooled over the rounds, p50/p99 the worst round's (wrk's"
        " percentiles), lags pooled over every event. Half rate: the same wrk, open loop on a fixed schedule."
        " CPU per create: stack over the load plus catching up, bare over the load; PostgreSQL is the run's"
        " database backends plus the server's own processes; RabbitMQ is shared with the rest of the machine;"
        " kernel interrupts (irq + softirq, the network stack outside any process) are the whole machine's;"
        " 'not ours' is the rest of its busy time (other processes, and processes that began and ended between"
        " two samples).",
    ]


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of each warm-up run (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of bare/stack runs (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="longest wait for consumers (s)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the run directory even on success")
    args = parser.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="itsm-bench-create-"))
    settings = bench_settings(
        run_dir,
        api_rate_limit=RATE_LIMIT,
        login_rate_limit=DEFAULT_LOGIN_RATE_LIMIT,
        gateway_env={"ITSM_API_MAX_INFLIGHT": str(MAX_INFLIGHT)},
    )
    summary = Summary("incident_create")
    print("== create pipeline, events, consumers and list of 50, against the bare baseline ==")
    print(
        f"machine: {machine_line()}\n"
        f"stack: every service as `make run` starts it (deploy/stack.py), problem and audit consuming; gateway API\n"
        f"  rate limit LIFTED to {RATE_LIMIT} req/s (ITSM_API_RATE_LIMIT) and in-flight cap LIFTED to {MAX_INFLIGHT}\n"
        f"  (ITSM_API_MAX_INFLIGHT): one client sends all the load. Login limit as under `make run`.\n"
        f"load: {wrk_version()}, -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency, {args.rounds}"
        f" rounds (bare, gateway, direct, bare list, gateway list), then {args.rounds} half-rate runs.\n"
        f"logs: {run_dir}",
        flush=True,
    )
    stack = stack_module.Stack(settings)
    bare_db: str | None = None
    bare: processes.ManagedProcess | None = None
    failed = True
    with signals_as_interrupt():
        try:
            print("starting the stack (migrations, every service, Traefik) ...", flush=True)
            stack.start()
            from benchlib import bare_app

            bare_db, bare_url = asyncio.run(create_scratch_database(settings.admin_database_url, "itsm_bench_bare"))
            asyncio.run(bare_app.create_schema(plain_dsn(bare_url)))
            bare, url = start_bare_app(run_dir, {"BARE_DATABASE_URL": plain_dsn(bare_url)})
            assert bare.pid is not None
            asyncio.run(measure(stack, url, bare.pid, bare_db, args, summary))
            summary.finish()
            failed = False
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
        finally:
            ignore_signals()
            print("cleaning up: stopping processes, dropping scratch databases and exchanges ...", flush=True)
            if bare is not None:
                bare.stop(grace=5)
            stack.stop()
            steps: list[tuple[str, Callable[[], object]]] = [
                ("stack database", stack.drop_database),
                ("broker topology", lambda: asyncio.run(remove_stack_topology(settings, ALL_QUEUES))),
            ]
            if hasattr(stack, "drop_broker_users"):  # the harness's broker users of this stack, when it makes some
                steps.append(("broker users", stack.drop_broker_users))
            if bare_db is not None:
                name = bare_db
                steps.append(
                    ("bare database", lambda: asyncio.run(drop_scratch_database(settings.admin_database_url, name)))
                )
            cleanup(steps)
            if failed or args.keep_logs:
                print(f"logs kept in {run_dir}", file=sys.stderr)
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if failed else 0


async def measure(
    stack: stack_module.Stack, bare_url: str, bare_pid: int, bare_db: str, args: Any, summary: Summary
) -> None:
    bench = Bench(stack, bare_url, bare_pid, bare_db, args)
    try:
        await bench.start()
        await bench.benchmark()
    finally:
        await bench.close()
    report(bench, summary)


if __name__ == "__main__":
    sys.exit(main())
