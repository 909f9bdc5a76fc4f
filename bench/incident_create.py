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
   benchlib/cpu.py CpuMeter): incident, auth, problem, audit, change, Traefik, the PostgreSQL backends of
   the run's database plus the server's own processes, RabbitMQ's beam.smp, the bare app, wrk. For the stack
   the window is the load plus the time until every consumer caught up, so the consumers' work for those
   creates is in it, divided by the incidents created (rows: wrk's successes plus the requests still in
   flight when it stopped); for the bare app the window is the load, divided by wrk's successes;
6. PostgreSQL WAL bytes per create over the same windows (pg_wal_lsn_diff(pg_current_wal_lsn(), <at the
   start>), benchlib/wal.py), divided by the same counts: the whole server's WAL, so whatever else writes on
   this PostgreSQL counts too; and the messages the broker delivered per create (RabbitMQ's global counters
   through `rabbitmqctl eval`, the management plugin not being enabled: benchlib/broker_counters.py), read
   before each create load on the stack and after its catching up: the whole node's, so other users of the
   broker count too.

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
with the previous one's backlog. Before each list run the listed database is ANALYZEd when the server runs
with autovacuum off (this machine's does; see `Bench.analyze`). Rates are pooled over the rounds (successes /
seconds), p50/p99 are the worst round's (wrk reports percentiles per run), the event lags are pooled over every
event.

The half-rate runs (the event lag without saturation): half of the gateway create rate just measured, sent
open-loop by the same wrk with a `delay()` in wrk.lua that keeps each thread on a fixed schedule (one request
every threads/rate seconds, read from CLOCK_MONOTONIC through LuaJIT's ffi). wrk2 is not packaged; wrk with a
schedule costs as little as the saturated runs' load generator, where a Python client would take CPU from the
services it measures (bench/incident_create.py's former httpx generator saw the bare baseline at 289 req/s
instead of about 2,500).

Prints each run, then details, then the summary table (figure | this project | bare baseline | ratio | target |
met?) with the date, machine size and load average; the table is also kept in build/bench/ for `make bench`.
Everything started is stopped and every scratch database and exchange removed, also on failure or Ctrl-C.

This module runs the plan (class `Bench`); the pieces it measures with are in bench/benchlib/: the outside
subscriber's events (subscriber_events.py), the consumers' sampler and figures (consumers.py), CPU (cpu.py), WAL
(wal.py), broker counters (broker_counters.py), wrk (wrk.py); the details and the summary table: create_report.py.

    uv run python bench/incident_create.py [--duration 8] [--rounds 2] [--connections 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.broker_counters import BrokerCounters
from benchlib.common import (
    BENCH_DIR,
    cleanup,
    ignore_signals,
    processes,
    services,
    signals_as_interrupt,
    stack_module,
    start_bare_app,
)
from benchlib.consumers import CONSUMERS, Observer, Sample, consumer_figures
from benchlib.cpu import CpuMeter, CpuSnapshot, cores_line
from benchlib.create_report import WRK, Run, report
from benchlib.figures import ms, percentile
from benchlib.machine import machine_line
from benchlib.scratch import (
    ALL_QUEUES,
    bench_settings,
    create_scratch_database,
    drop_scratch_database,
    plain_dsn,
    remove_stack_topology,
)
from benchlib.subscriber_events import Events
from benchlib.table import Summary
from benchlib.tokens import agent_token, password_token
from benchlib.wal import WalMeter
from benchlib.wrk import run_wrk, wrk_version
from gateway import DEFAULT_LOGIN_RATE_LIMIT  # deploy/gateway.py (deploy/ is on sys.path, see benchlib.common)

RATE_LIMIT = 1_000_000  # requests per second per client: effectively none
MAX_INFLIGHT = 100_000
TOKEN_MAX_AGE = 600.0  # access tokens live 15 minutes
SUBSCRIBER = "subscriber"


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
        self.wal = WalMeter(plain_dsn(processes.with_database(self.s.admin_database_url, "postgres")))
        self.broker = BrokerCounters()
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
        await self.wal.start()
        self.meter.exclude.add(self.wal.backend_pid)

    async def close(self) -> None:
        await self.observer.close()
        await self.wal.close()
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

    async def analyze(self, database: str) -> None:
        """ANALYZE the listed database when this PostgreSQL runs with autovacuum off (this machine's does): the
        tables grew from empty during the bench, and without statistics the planner takes a list of 50 for a
        sequential scan and a sort (10.6 ms of PostgreSQL CPU per list of a few thousand incidents, where the
        index scan costs 0.3 ms). With autovacuum on, as in production, PostgreSQL does this by itself."""
        import asyncpg

        connection = await asyncpg.connect(plain_dsn(processes.with_database(self.s.admin_database_url, database)))
        try:
            if await connection.fetchval("SHOW autovacuum") == "off":
                await connection.execute("ANALYZE")
        finally:
            await connection.close()

    async def run(self, kind: str, target: str, *, duration: float, rate: float = 0.0, record: bool = True) -> Run:
        label = f"{kind} {target}" + (" half rate" if rate else "")
        print(f"running: {label}{' (warm-up)' if not record else ''} ...", flush=True)
        database = self.bare_db if target == "bare" else processes.database_of(self.s.database_url)
        self.meter.databases = {database}
        if kind == "list":
            await self.analyze(database)
        snapshots: list[CpuSnapshot] = []
        wal_start: list[int] = []

        async def started(pid: int) -> None:
            snapshots.append(await self.meter.snapshot())
            wal_start.append(await self.wal.position())

        on_stack = kind == "create" and target != "bare"
        # The broker's counters: rabbitmqctl takes about a second, so before the load and after the catching up.
        delivered_before = await self.broker.delivered() if on_stack and record else None
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
        if on_stack:
            end, run.wal_bytes = await self.catch_up(run, before, wal_start[0])
        else:
            end, run.wal_bytes = load_end, await self.wal.bytes_since(wal_start[0])
        run.cpu = CpuMeter.seconds(snapshots[0], end) | {WRK: result.cpu_seconds}
        if delivered_before is not None and (delivered_after := await self.broker.delivered()) is not None:
            run.delivered = delivered_after - delivered_before
        if record:
            self.runs.append(run)
        print(run.line(), flush=True)
        if on_stack:
            print(
                f"  {'':<34} lag p50 {ms(percentile(run.lags, 50))} p99 {ms(percentile(run.lags, 99))} over"
                f" {len(run.lags)} events; after the load: every event out {ms(run.relay_caught_up)},"
                f" consumers caught up {ms(run.caught_up)}",
                flush=True,
            )
        if run.completed:
            delivered = run.delivered
            per_create = "" if delivered is None else f"; broker messages delivered {delivered / run.completed:.2f}"
            print(
                f"  {'':<34} per request: WAL {(run.wal_bytes or 0) / run.completed:,.0f} bytes{per_create}", flush=True
            )
        return run

    async def catch_up(self, run: Run, before: Sample, wal_start: int) -> tuple[CpuSnapshot, int]:
        """Wait until the outside subscriber and both consumers have every incident created so far; fill in the
        run's event lags and consumer figures. Returns the CPU snapshot taken at that moment and the WAL bytes
        written since the position `wal_start`, read right after it."""
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
        wal_bytes = await self.wal.bytes_since(wal_start)
        self.events.read()
        if before.incidents is not None and sample.incidents is not None:
            run.created = sample.incidents - before.incidents
        run.caught_up = max(done_at.values()) - w.ended if len(done_at) == len(CONSUMERS) + 1 else math.nan
        run.relay_caught_up = done_at[SUBSCRIBER] - w.ended if SUBSCRIBER in done_at else math.nan
        run.lags = self.events.lags(w.started, sample.at)
        for name in CONSUMERS:
            run.consumers[name] = consumer_figures(self.observer, self.events, name, w, done_at.get(name))
        return end, wal_bytes

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
    unread = dict(bench.observer.failed)
    if bench.broker.unavailable:
        unread["broker messages delivered"] = bench.broker.unavailable
    report(bench.runs, args, unread, summary, rate_limit=RATE_LIMIT, max_inflight=MAX_INFLIGHT)


if __name__ == "__main__":
    sys.exit(main())
