"""What the benchmarks share: the machine line, percentiles, CPU accounting from /proc, the summary table,
tokens, scratch databases and exchanges, and cleanup."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_ROOT / "bench"
# Where each benchmark leaves its summary rows; `make bench` prints them all at the end (benchlib/summary.py).
RESULTS_DIR = REPO_ROOT / "build" / "bench"
sys.path.insert(0, str(REPO_ROOT / "deploy"))

import processes  # noqa: E402  (deploy/*.py, as tests/e2e imports them)
import service_table as services  # noqa: E402
import stack as stack_module  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1


# ---------------------------------------------------------------- figures


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline and not math.isnan(baseline) and not math.isnan(value) else math.nan


# ---------------------------------------------------------------- the machine


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"


def memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return math.nan


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine_size() -> str:
    return f"{CPUS} cores (nproc), {memory_gib():.1f} GiB RAM"


def machine_line() -> str:
    """Date, machine size and load: the line that goes with every figure."""
    return f"{now_text()}; {machine_size()}; load average {load_average()}"


# ---------------------------------------------------------------- CPU accounting from /proc


@dataclass(frozen=True)
class ProcStat:
    comm: str
    pgrp: int
    seconds: float  # utime + stime of every thread


def proc_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcStat(comm, int(fields[2]), (int(fields[11]) + int(fields[12])) / CLK_TCK)


def all_processes() -> dict[int, ProcStat]:
    found: dict[int, ProcStat] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) is not None:
            found[int(entry.name)] = stat
    return found


def _system_seconds() -> tuple[float, float]:
    """(busy, of which interrupts) CPU seconds of the whole machine since boot, over all cores. Interrupt time
    (irq + softirq: the network stack, loopback included, when it runs outside a process) is no process's."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # user nice system idle iowait irq softirq steal
    return (sum(values[:8]) - idle) / CLK_TCK, (values[5] + values[6]) / CLK_TCK


@dataclass
class CpuSnapshot:
    at: float
    busy: float
    interrupts: float
    processes: dict[int, tuple[str, float]]  # pid -> (group, CPU seconds so far)


POSTGRES = "postgresql"
RABBITMQ = "rabbitmq (beam.smp)"
MACHINE = "machine busy"
INTERRUPTS = "kernel interrupts (irq + softirq)"
NOT_OURS = "not ours (rest of the machine)"
OTHER = "~"  # prefix of the groups of processes that are not ours: "~<command>"


def is_ours(group: str) -> bool:
    return group not in (MACHINE, INTERRUPTS, NOT_OURS) and not group.startswith(OTHER)


@dataclass
class CpuMeter:
    """CPU seconds used between two snapshots, per group of processes, from /proc/<pid>/stat (utime + stime).

    - `groups`: name -> process group id. The stack starts every service, Traefik and the bare app in a
      session of its own, so its pid is its group: every process and thread of it is counted.
    - `pids`: name -> single pids (the outside subscriber, this process).
    - PostgreSQL: the backends connected to `databases` plus the server's own processes (postmaster,
      walwriter, checkpointer, background writer, autovacuum launcher...), which work for every commit;
      backends of other databases and the pids in `exclude` (the bench's own connections) are left out.
    - RabbitMQ: beam.smp, all of it (the broker is shared with whatever else uses it here).
    Every other process is counted under "~<its command>", and whatever kept the machine busy beyond our
    groups (those others, kernel time not charged to a process) shows as NOT_OURS."""

    admin_dsn: str
    databases: set[str] = field(default_factory=set)
    groups: dict[str, int] = field(default_factory=dict)
    pids: dict[str, set[int]] = field(default_factory=dict)
    exclude: set[int] = field(default_factory=set)
    _connection: Any = None

    async def _postgres_databases(self) -> dict[int, str | None]:
        """pid -> database of every PostgreSQL process the server reports (None for its own processes)."""
        import asyncpg

        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(self.admin_dsn)
            self.exclude.add(int(await self._connection.fetchval("SELECT pg_backend_pid()")))
        rows = await self._connection.fetch("SELECT pid, datname FROM pg_stat_activity")
        return {int(r["pid"]): r["datname"] for r in rows}

    async def snapshot(self) -> CpuSnapshot:
        databases = await self._postgres_databases()
        by_group = {pgid: name for name, pgid in self.groups.items()}
        by_pid = {pid: name for name, pids in self.pids.items() for pid in pids}
        found: dict[int, tuple[str, float]] = {}
        for pid, stat in all_processes().items():
            group = OTHER + stat.comm
            if pid in by_pid:
                group = by_pid[pid]
            elif stat.pgrp in by_group:
                group = by_group[stat.pgrp]
            elif stat.comm == "postgres" and pid not in self.exclude:
                database = databases.get(pid)
                if database is None or database in self.databases:
                    group = POSTGRES
                else:
                    group = OTHER + "postgres (other databases)"
            elif stat.comm == "beam.smp":
                group = RABBITMQ
            found[pid] = (group, stat.seconds)
        busy, interrupts = _system_seconds()
        return CpuSnapshot(time.monotonic(), busy, interrupts, found)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    @staticmethod
    def seconds(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
        """CPU seconds per group over the interval, with MACHINE (all cores), INTERRUPTS (of the machine, no
        process's) and NOT_OURS (the machine's busy time beyond our groups and the interrupts: other processes,
        and processes that started and ended between the two snapshots)."""
        groups: dict[str, float] = {}
        for pid, (group, used) in end.processes.items():
            before = start.processes.get(pid, (group, 0.0))[1]
            groups[group] = groups.get(group, 0.0) + max(0.0, used - before)
        busy, interrupts = end.busy - start.busy, end.interrupts - start.interrupts
        ours = sum(v for k, v in groups.items() if is_ours(k))
        return {MACHINE: busy, **groups, INTERRUPTS: interrupts, NOT_OURS: max(0.0, busy - ours - interrupts)}


def cores_line(start: CpuSnapshot, end: CpuSnapshot) -> str:
    """Cores used per group of ours, the rest of the machine and the busiest other processes."""
    wall = end.at - start.at
    if wall <= 0:
        return "cpu: n/a"
    used = CpuMeter.seconds(start, end)
    ours = [f"{k} {v / wall:.2f}" for k, v in used.items() if is_ours(k) and v / wall >= 0.01]
    others = sorted(((v, k) for k, v in used.items() if k.startswith(OTHER) and v / wall >= 0.02), reverse=True)
    text = f"cores used (of {CPUS}): machine {used[MACHINE] / wall:.2f}; " + ", ".join(ours)
    text += f"; interrupts {used[INTERRUPTS] / wall:.2f}; not ours {used[NOT_OURS] / wall:.2f}"
    if others:
        text += " (" + ", ".join(f"{k[len(OTHER) :]} {v / wall:.2f}" for v, k in others[:4]) + ")"
    return text


# ---------------------------------------------------------------- the summary table


@dataclass
class Row:
    figure: str
    project: str
    baseline: str = "—"
    ratio: str = "—"
    target: str = "—"
    met: bool | None = None

    @property
    def met_text(self) -> str:
        return "—" if self.met is None else ("yes" if self.met else "**no**")


@dataclass
class Summary:
    """The table a benchmark ends with: figure | this project | bare baseline | ratio | target | met?"""

    bench: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    date: str = field(default_factory=now_text)
    machine: str = field(default_factory=machine_size)
    load_start: str = field(default_factory=load_average)
    load_end: str = ""

    def header(self) -> str:
        return (
            f"{self.bench}: {self.date}; {self.machine}; load average {self.load_start} at the start,"
            f" {self.load_end or load_average()} at the end"
        )

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.rows.append(Row(*args, **kwargs))

    def markdown(self) -> str:
        lines = [
            self.header(),
            "",
            "| figure | this project | bare baseline | ratio | target | met? |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.figure} | {r.project} | {r.baseline} | {r.ratio} | {r.target} | {r.met_text} |" for r in self.rows
        ]
        lines += [f"{note}" for note in self.notes]
        return "\n".join(lines)

    def finish(self) -> None:
        """Print the table and keep it for `make bench`'s combined summary."""
        self.load_end = load_average()
        print()
        print("== summary ==")
        print(self.markdown(), flush=True)
        with contextlib.suppress(OSError):
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            (RESULTS_DIR / f"{self.bench}.json").write_text(json.dumps(asdict(self), indent=1))


def fmt_ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


# ---------------------------------------------------------------- process lifetime


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP (and SIGINT when ignored by a background shell) raise KeyboardInterrupt, so the
    cleanup in `finally` blocks runs however the benchmark is stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def ignore_signals() -> None:
    """During cleanup: a second Ctrl-C must not cut it short."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def cleanup(steps: Sequence[tuple[str, Callable[[], object]]], *, attempts: int = 12, delay: float = 5.0) -> None:
    """Run every cleanup step, each retried for a minute while PostgreSQL or RabbitMQ is briefly away (other
    suites on this machine restart them); report what still failed on stderr."""
    for what, action in steps:
        for attempt in range(1, attempts + 1):
            try:
                action()
                break
            except Exception as exc:
                if attempt == attempts:
                    print(f"cleanup failed: {what}: {exc}", file=sys.stderr)
                else:
                    time.sleep(delay)


def uvicorn_process(
    name: str, app: str, port: int, env: dict[str, str], log: Path, *, app_dir: Path
) -> processes.ManagedProcess:
    """A uvicorn server started like deploy/stack.py starts the services (same flags), dying with us."""
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--app-dir",
        str(app_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-server-header",
        "--timeout-graceful-shutdown",
        "5",
    ]
    return processes.ManagedProcess(name, argv, {**os.environ, **env}, log, die_with_parent=True)


def start_bare_app(run_dir: Path, env: dict[str, str]) -> tuple[processes.ManagedProcess, str]:
    """bench/benchlib/bare_app.py under uvicorn on a free port; returns it and its base URL once healthy."""
    port = processes.free_port()
    bare = uvicorn_process("bare", "benchlib.bare_app:app", port, env, run_dir / "bare.log", app_dir=BENCH_DIR)
    bare.start()
    url = f"http://127.0.0.1:{port}"
    processes.wait_until(
        lambda: processes.http_status(f"{url}/healthz") == 200, timeout=60, process=bare, what="the bare app"
    )
    return bare, url


# ---------------------------------------------------------------- scratch databases and exchanges


def plain_dsn(url: str) -> str:
    """A postgresql:// URL asyncpg takes (the stack's URLs may name the SQLAlchemy driver)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_scratch_database(admin_url: str, prefix: str) -> tuple[str, str]:
    """A new empty database on the server of `admin_url`; returns (name, its admin URL)."""
    import asyncpg

    name = f"{prefix}_{secrets.token_hex(5)}"
    connection = await asyncpg.connect(plain_dsn(processes.with_database(admin_url, "postgres")))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name, processes.with_database(admin_url, name)


async def drop_scratch_database(admin_url: str, name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(plain_dsn(processes.with_database(admin_url, "postgres")))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def queues_with_prefix(prefix: str) -> list[str]:
    """Queue names starting with `prefix` (rabbitmqctl when it is installed and may talk to the broker)."""
    try:
        out = subprocess.run(
            ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().startswith(prefix)]


async def remove_stack_topology(settings: stack_module.StackSettings, known_queues: Iterable[str] = ()) -> None:
    """Exchanges of an isolated stack and the consumer queues (and their dead-letter queues) its services
    declared under its prefix."""
    import aio_pika

    names = {*queues_with_prefix(settings.queue_prefix), *(settings.queue_prefix + q for q in known_queues)}
    queues = {q.removesuffix(".dlq") for q in names if q != f"{settings.exchange}.unrouted"}
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        for queue in (f"{settings.exchange}.unrouted", *sorted(queues), *(f"{q}.dlq" for q in sorted(queues))):
            await channel.queue_delete(queue)
        for exchange in (settings.exchange, f"{settings.exchange}.unrouted", settings.dead_letter_exchange):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


# Every consumer queue of the table (deploy/services.toml), in case rabbitmqctl cannot list them.
ALL_QUEUES = tuple(q for s in services.table() for q in s.queues)
INCIDENT_QUEUES = services.get("incident").queues


def bench_settings(run_dir: Path, **overrides: Any) -> stack_module.StackSettings:
    """An isolated stack (free ports, its own database, exchange and queue prefix) named for the benchmarks. The
    harness gives each service what it needs as under `make run` (keys and passwords kept in `run_dir`)."""
    token = secrets.token_hex(4)
    values: dict[str, Any] = {
        "database_name": f"itsm_bench_{token}",
        "exchange": f"itsm_bench_{token}.events",
        "dead_letter_exchange": f"itsm_bench_{token}.dlx",
        "queue_prefix": f"itsm_bench_{token}.",
        "die_with_parent": True,
    }
    if "broker_user_prefix" in {f.name for f in dataclasses.fields(stack_module.StackSettings)}:
        values["broker_user_prefix"] = f"itsm_bench_{token}."  # one broker user per service, when the harness has them
    values.update(overrides)
    return stack_module.StackSettings.isolated(run_dir, **values)


# ---------------------------------------------------------------- auth


async def password_token(client: Any, username: str, password: str) -> str:
    response = await client.post(
        "/api/v1/auth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


async def agent_token(base_url: str, admin_password: str, username: str = "bench-agent") -> tuple[str, str]:
    """An `agent` user created through the auth API (as an admin would), logged in with the password grant.
    `base_url`: the gateway, or the auth service's own port (no login rate limit there). Returns (access
    token, password)."""
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        admin = await password_token(client, "admin", admin_password)
        password = secrets.token_urlsafe(18)
        response = await client.post(
            "/api/v1/auth/users",
            json={"username": username, "password": password, "full_name": "Bench Agent", "roles": ["agent"]},
            headers={"Authorization": f"Bearer {admin}"},
        )
        response.raise_for_status()
        return await password_token(client, username, password), password
