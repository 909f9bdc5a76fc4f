"""Benchmark: creating incidents (POST /api/v1/incidents) under load, against a bare insert endpoint.

Starts an isolated stack (deploy/stack.py: auth, incident, Traefik; its own database, exchange and ports) with
the gateway's API rate limit and per-client in-flight cap lifted (one client sends all the load; the login
limit is unchanged), creates an `agent` user through the auth API and logs it in. Then, with a closed-loop
load generator (httpx.AsyncClient, 32 connections, in its own process) for a warm-up and a measured window:

1. POST /api/v1/incidents through the gateway with the agent's token;
2. the same directly on the incident service's port (what the gateway costs);
3. the same body to a bare FastAPI + asyncpg endpoint (bench/benchlib/bare_app.py, same uvicorn flags, its own
   scratch database, a table with the incident table's columns and indexes) - the baseline;
4. POST /api/v1/incidents through the gateway again, with one connection for 10 s: the event lag without
   saturation (the relay's latency rather than a backlog);
5. a FastAPI endpoint that does no database work, 10 s (the load generator's own ceiling on this machine).

It prints, per run: rate (req/s), p50/p99 latency, status counts and the CPU each process used; the ratio of
the incident rate to the bare rate; and, from a plain aio_pika subscriber bound to the stack's exchange, the
lag from the HTTP 201 (as the load generator saw it) to the `incident.created` event carrying that incident
id (p50/p99). Targets are printed beside the figures; nothing is asserted. Everything started is stopped and
every scratch database and exchange is removed, also on failure or Ctrl-C.

    uv run python bench/incident_create.py [--duration 20] [--warmup 5] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
    BENCH_DIR,
    CPUS,
    INCIDENT_QUEUES,
    CpuMeter,
    CpuSnapshot,
    agent_token,
    cleanup,
    ignore_signals,
    load_average,
    ms,
    percentile,
    processes,
    remove_stack_topology,
    services,
    signals_as_interrupt,
    stack_module,
    uvicorn_process,
    verdict,
)

RATE_LIMIT = 1_000_000  # requests per second per client: effectively none
MAX_INFLIGHT = 1_000
TARGET_RATIO = 0.6
TARGET_P99 = 0.050
TARGET_LAG_P99 = 0.025


@dataclass
class Run:
    name: str
    seconds: float
    latencies: list[float]
    statuses: dict[str, int]
    errors: dict[str, int]
    created: list[tuple[str, float]]
    cpu: str
    usage: dict[str, float]
    loadgen_cpu: float
    lags: list[float] = field(default_factory=list)
    missing: int = 0
    trend: str = "n/a"

    @property
    def ok(self) -> int:
        return self.statuses.get("201", 0)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    def line(self) -> str:
        other = {k: v for k, v in self.statuses.items() if k != "201"}
        return (
            f"  {self.name:<34} {self.rate:8.1f} req/s  p50 {ms(percentile(self.latencies, 50)):>9}"
            f"  p99 {ms(percentile(self.latencies, 99)):>9}  201s {self.ok:>6}" + (f"  other {other}" if other else "")
        )


class EventSubscriber:
    """A plain AMQP subscriber, as another system would bind one: its own exclusive queue on the exchange."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self._arrived = asyncio.Event()
        self.connection: Any = None

    async def start(self, amqp_url: str, exchange: str) -> None:
        import aio_pika

        self.connection = await aio_pika.connect(amqp_url)
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "incident.created")
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: Any) -> None:
        arrived = time.monotonic()
        event = json.loads(message.body)
        self.seen.setdefault(str(event.get("subject") or event["data"]["id"]), arrived)
        self._arrived.set()

    async def wait_for(self, ids: list[str], within: float) -> float:
        """Wait until every id has arrived, at most `within` seconds; returns how long it waited."""
        started = time.monotonic()
        while (left := started + within - time.monotonic()) > 0:
            self._arrived.clear()
            if all(i in self.seen for i in ids):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return time.monotonic() - started

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


async def run_load(
    name: str,
    url: str,
    headers: dict[str, str],
    args: argparse.Namespace,
    meter: CpuMeter,
    work_dir: Path,
    *,
    duration: float | None = None,
    concurrency: int | None = None,
    record_ids: bool = False,
) -> Run:
    config = {
        "url": url,
        "headers": headers,
        "concurrency": concurrency or args.concurrency,
        "warmup": args.warmup,
        "duration": duration or args.duration,
        "record_ids": record_ids,
    }
    slug = "".join(c if c.isalnum() else "-" for c in name)
    config_path, result_path = work_dir / f"load-{slug}.json", work_dir / f"result-{slug}.json"
    config_path.write_text(json.dumps(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH_DIR / "benchlib" / "loadgen.py"),
        str(config_path),
        str(result_path),
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=processes._die_with_parent,  # no orphan load generator if this process is killed
    )
    meter.pids["load generator"] = [process.pid]
    snapshots: dict[str, CpuSnapshot] = {}
    try:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode().strip()
            if line in ("MEASURE", "DONE"):
                snapshots[line] = await meter.snapshot()
        code = await process.wait()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if code != 0 or not result_path.is_file():
        raise RuntimeError(f"load generator for {name!r} failed with exit code {code}")
    result = json.loads(result_path.read_text())
    start, end = result["window"]
    measured = len(snapshots) == 2
    cpu = CpuMeter.report(snapshots["MEASURE"], snapshots["DONE"]) if measured else "cpu: n/a"
    usage = CpuMeter.usage(snapshots["MEASURE"], snapshots["DONE"]) if measured else {}
    return Run(
        name=name,
        seconds=end - start,
        latencies=result["latencies"],
        statuses=result["statuses"],
        errors=result["errors"],
        created=[(i, t) for i, t in result["created"]],
        cpu=cpu,
        usage=usage,
        loadgen_cpu=result["cpu_seconds"] / result["wall_seconds"],
    )


async def match_events(run: Run, subscriber: EventSubscriber, within: float) -> float:
    ids = [i for i, _ in run.created]
    waited = await subscriber.wait_for(ids, within)
    run.lags = [subscriber.seen[i] - t for i, t in run.created if i in subscriber.seen]
    run.missing = sum(1 for i in ids if i not in subscriber.seen)
    run.trend = lag_trend(run, subscriber)
    return waited


def cpu_per_request(run: Run) -> str:
    """CPU milliseconds per 201 of each busy process: steadier than rates when the machine is shared."""
    if not run.usage or not run.rate:
        return "cpu per request: n/a"
    skip = ("machine busy", "not ours (rest of the machine)")
    parts = [
        f"{name} {1000 * cores / run.rate:.2f}"
        for name, cores in run.usage.items()
        if name not in skip and cores >= 0.02
    ]
    return "cpu ms per request: " + ", ".join(parts)


def lag_line(run: Run) -> str:
    lags = run.lags
    early = sum(1 for v in lags if v < 0)
    return (
        f"  {run.name:<34} p50 {ms(percentile(lags, 50)):>9}  p99 {ms(percentile(lags, 99)):>9}"
        f"  max {ms(max(lags) if lags else math.nan):>9}  matched {len(lags)}/{len(run.created)}"
        f"  missing {run.missing}  before-201 {early}"
    )


def lag_trend(run: Run, subscriber: EventSubscriber) -> str:
    """p50 lag per quarter of the measured window: flat means the relay keeps up (the lag is its latency),
    rising means it falls behind the request rate (the lag is a growing backlog)."""
    if not run.created:
        return "n/a"
    start = min(t for _, t in run.created)
    span = max(t for _, t in run.created) - start or 1.0
    quarters: list[list[float]] = [[], [], [], []]
    for event_id, t in run.created:
        if event_id in subscriber.seen:
            quarters[min(3, int(4 * (t - start) / span))].append(subscriber.seen[event_id] - t)
    return " -> ".join(ms(percentile(q, 50)) for q in quarters)


async def benchmark(
    stack: stack_module.Stack, bare_url: str, bare_pid: int, bare_database: str, args: argparse.Namespace
) -> None:
    from itsm_shared.db import asyncpg_dsn

    s = stack.settings
    assert s.bootstrap_admin_password
    access, _ = await agent_token(s.gateway_url, s.bootstrap_admin_password)
    headers = {"Authorization": f"Bearer {access}"}
    watched = {name: stack.processes.get(name) for name in (stack_module.GATEWAY, "incident", "auth")}
    meter = CpuMeter(
        pids={name: [p.pid] for name, p in watched.items() if p is not None and p.pid is not None}
        | {"bare app": [bare_pid], "subscriber": [os.getpid()]},
        admin_dsn=asyncpg_dsn(processes.with_database(s.admin_database_url, "postgres")),
        databases=(processes.database_of(s.database_url), bare_database),
    )
    subscriber = EventSubscriber()
    await subscriber.start(s.amqp_url, s.exchange)
    work_dir = Path(tempfile.mkdtemp(prefix="loadgen-", dir=s.run_dir))
    runs: list[Run] = []
    drains: dict[str, float] = {}
    try:
        path = services.get("incident").api_prefix
        plan = [
            ("incident via gateway", f"{s.gateway_url}{path}", headers, True),
            ("incident direct (no gateway)", f"{s.service_url('incident')}{path}", headers, True),
            ("bare FastAPI+asyncpg insert", f"{bare_url}/incidents", {}, False),
        ]
        for name, url, run_headers, events in plan:
            print(f"running: {name} ...", flush=True)
            run = await run_load(name, url, run_headers, args, meter, work_dir, record_ids=events)
            runs.append(run)
            if events:
                drains[name] = await match_events(run, subscriber, within=60)
        # The event path without saturation: one connection, so the lag is the relay's latency, not a backlog.
        name = "incident via gateway, 1 connection"
        print(f"running: {name} ...", flush=True)
        url = f"{s.gateway_url}{path}"
        run = await run_load(name, url, headers, args, meter, work_dir, duration=10, concurrency=1, record_ids=True)
        runs.append(run)
        drains[name] = await match_events(run, subscriber, within=60)
        print("running: noop (load-generator ceiling) ...", flush=True)
        runs.append(
            await run_load("noop endpoint (client ceiling)", f"{bare_url}/noop", {}, args, meter, work_dir, duration=10)
        )
    finally:
        await subscriber.close()
    report(runs, drains, args)


def report(runs: list[Run], drains: dict[str, float], args: argparse.Namespace) -> None:
    by_name = {r.name: r for r in runs}
    gateway, direct = by_name["incident via gateway"], by_name["incident direct (no gateway)"]
    bare, noop = by_name["bare FastAPI+asyncpg insert"], by_name["noop endpoint (client ceiling)"]
    print()
    print("== results: POST, 201 responses per second over the measured window (closed loop) ==")
    for run in runs:
        print(run.line())
        print(f"  {'':<34} {run.cpu}")
        print(f"  {'':<34} load generator process alone: {run.loadgen_cpu:.2f} cores over its whole life")
        print(f"  {'':<34} {cpu_per_request(run)}")
        for error, count in list(run.errors.items())[:5]:
            print(f"  {'':<34} error x{count}: {error}")
    print()
    print("== against the targets ==")
    for run in (gateway, direct):
        ratio = run.rate / bare.rate if bare.rate else math.nan
        print(
            f"  rate ratio {run.name} / bare insert: {ratio:.2f}x "
            f"({run.rate:.1f} / {bare.rate:.1f} req/s; target >= {TARGET_RATIO}x: {verdict(ratio >= TARGET_RATIO)})"
        )
    for run in (gateway, direct):
        p99 = percentile(run.latencies, 99)
        print(f"  p99 latency {run.name}: {ms(p99)} (target <= {ms(TARGET_P99)}: {verdict(p99 <= TARGET_P99)})")
    bare99, noop99 = ms(percentile(bare.latencies, 99)), ms(percentile(noop.latencies, 99))
    print(f"  for reference: bare insert p99 {bare99}, noop p99 {noop99}")
    print("  event lag, HTTP 201 at the load generator -> incident.created at a plain aio_pika subscriber:")
    light = by_name["incident via gateway, 1 connection"]
    for run in (gateway, direct, light):
        print(lag_line(run))
        lag99 = percentile(run.lags, 99)
        print(
            f"  {'':<34} target p99 <= {ms(TARGET_LAG_P99)}: {verdict(lag99 <= TARGET_LAG_P99)};"
            f" last event {drains.get(run.name, math.nan):.1f} s after the load stopped"
        )
        print(f"  {'':<34} p50 lag by quarter of the window: {run.trend}")
    print()
    print(
        f"notes: {CPUS} cores shared by the load generator, Traefik, uvicorn, PostgreSQL and RabbitMQ; the noop run\n"
        f"  shows what the load generator + uvicorn alone can do here ({noop.rate:.0f} req/s). Latencies are measured\n"
        f"  by the load generator, so they include its own queueing when it is CPU-starved. Lag clocks: the load\n"
        f"  generator and the subscriber use the same CLOCK_MONOTONIC (different processes, one machine)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds before each run (default 5)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections / workers (default 32)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the run directory even on success")
    args = parser.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="itsm-bench-create-"))
    settings = stack_module.StackSettings.isolated(
        run_dir,
        api_rate_limit=RATE_LIMIT,
        gateway_env={"ITSM_API_MAX_INFLIGHT": str(MAX_INFLIGHT)},
        die_with_parent=True,
    )
    print("== incident create benchmark ==")
    print(
        f"gateway: API rate limit LIFTED to {RATE_LIMIT} req/s per client (ITSM_API_RATE_LIMIT) and in-flight cap\n"
        f"  lifted to {MAX_INFLIGHT} (ITSM_API_MAX_INFLIGHT), since one client sends all the load; login limit as in"
        f" an isolated stack.\nload: {args.concurrency} connections, closed loop, {args.warmup:g} s warm-up +"
        f" {args.duration:g} s measured per run, httpx.AsyncClient (uvloop) in a separate process.\n"
        f"machine: {CPUS} cores, load average before start {load_average()} (other work on the machine skews this).\n"
        f"logs: {run_dir}",
        flush=True,
    )
    stack = stack_module.Stack(settings)
    bare_db: Any = None
    bare: processes.ManagedProcess | None = None
    failed = True
    with signals_as_interrupt():
        try:
            stack.start()
            from benchlib import bare_app
            from itsm_shared.db import asyncpg_dsn
            from itsm_shared.testing import create_database

            bare_db = asyncio.run(create_database(settings.admin_database_url, "itsm_bench_bare"))
            dsn = asyncpg_dsn(bare_db.admin_url)
            asyncio.run(bare_app.create_schema(dsn))
            port = processes.free_port()
            bare = uvicorn_process(
                "bare",
                "benchlib.bare_app:app",
                port,
                {"BARE_DATABASE_URL": dsn},
                run_dir / "bare.log",
                app_dir=BENCH_DIR,
            )
            bare.start()
            bare_url = f"http://127.0.0.1:{port}"
            processes.wait_until(
                lambda: processes.http_status(f"{bare_url}/healthz") == 200,
                timeout=60,
                process=bare,
                what="the bare app",
            )
            assert bare.pid is not None
            asyncio.run(benchmark(stack, bare_url, bare.pid, bare_db.name, args))
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
                ("broker topology", lambda: asyncio.run(remove_stack_topology(settings, INCIDENT_QUEUES))),
            ]
            if bare_db is not None:
                steps.append(("bare database", lambda: asyncio.run(drop(bare_db))))
            cleanup(steps)
            if failed or args.keep_logs:
                print(f"logs kept in {run_dir}", file=sys.stderr)
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if failed else 0


async def drop(database: Any) -> None:
    from itsm_shared.testing import drop_database

    await drop_database(database)


if __name__ == "__main__":
    sys.exit(main())
