"""What both benchmarks share: the stack runner, percentiles, CPU accounting, cleanup of scratch resources."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_ROOT / "bench"
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
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


# ---------------------------------------------------------------- CPU accounting from /proc


def _proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, in seconds; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _pids_named(command: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == command:
                    pids.append(int(entry.name))
    return pids


def _system_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class CpuSnapshot:
    at: float
    busy: float
    # pid -> (group, CPU seconds so far)
    processes: dict[int, tuple[str, float]]


@dataclass
class CpuMeter:
    """CPU used between two snapshots by: named pids (ours), the PostgreSQL backends connected to our databases,
    the rest of PostgreSQL and RabbitMQ (both shared with whatever else runs here), and, as the remainder of
    the machine's busy time, everything else on the machine."""

    pids: dict[str, list[int]] = field(default_factory=dict)
    admin_dsn: str | None = None
    databases: tuple[str, ...] = ()

    async def _our_backends(self) -> set[int]:
        if not self.admin_dsn or not self.databases:
            return set()
        import asyncpg

        connection = await asyncpg.connect(self.admin_dsn)
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[])", list(self.databases)
            )
        finally:
            await connection.close()
        return {int(r["pid"]) for r in rows}

    async def snapshot(self) -> CpuSnapshot:
        ours = await self._our_backends()
        processes: dict[int, tuple[str, float]] = {}
        for name, pids in self.pids.items():
            for pid in pids:
                if (used := _proc_cpu_seconds(pid)) is not None:
                    processes[pid] = (name, used)
        for pid in _pids_named("postgres"):
            group = "postgres (our databases)" if pid in ours else "postgres (rest, shared)"
            if (used := _proc_cpu_seconds(pid)) is not None:
                processes.setdefault(pid, (group, used))
        for pid in _pids_named("beam.smp"):
            if (used := _proc_cpu_seconds(pid)) is not None:
                processes.setdefault(pid, ("rabbitmq (shared)", used))
        busy, _ = _system_busy_seconds()
        return CpuSnapshot(time.monotonic(), busy, processes)

    @staticmethod
    def usage(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
        """Cores used per group over the interval, with 'machine busy' and 'not ours (rest of the machine)'."""
        wall = end.at - start.at
        if wall <= 0:
            return {}
        groups: dict[str, float] = {}
        for pid, (group, used) in end.processes.items():
            before = start.processes.get(pid, (group, 0.0))[1]
            groups[group] = groups.get(group, 0.0) + (used - before) / wall
        busy = (end.busy - start.busy) / wall
        return {"machine busy": busy, **groups, "not ours (rest of the machine)": busy - sum(groups.values())}

    @classmethod
    def report(cls, start: CpuSnapshot, end: CpuSnapshot) -> str:
        usage = cls.usage(start, end)
        if not usage:
            return "cpu: n/a"
        return f"cpu, cores of {CPUS}: " + ", ".join(f"{name} {value:.2f}" for name, value in usage.items())


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"


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
    """Exchanges of an isolated stack and the consumer queues its services declared under its prefix."""
    from itsm_shared.testing import remove_topology

    queues = {*queues_with_prefix(settings.queue_prefix), *(settings.queue_prefix + q for q in known_queues)}
    queues = {q for q in queues if not q.endswith(".dlq") and q != f"{settings.exchange}.unrouted"}
    await remove_topology(settings.amqp_url, settings.exchange, settings.dead_letter_exchange, tuple(sorted(queues)))


# The incident service's consumer queues (deploy/services.toml), in case rabbitmqctl cannot list them.
INCIDENT_QUEUES = services.get("incident").queues


# ---------------------------------------------------------------- auth


async def password_token(client: Any, username: str, password: str) -> str:
    response = await client.post(
        "/api/v1/auth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


async def agent_token(gateway: str, admin_password: str, username: str = "bench-agent") -> tuple[str, str]:
    """An `agent` user created through the auth API (as an admin would), logged in with the password grant.
    Returns (access token, password)."""
    import httpx

    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        admin = await password_token(client, "admin", admin_password)
        password = secrets.token_urlsafe(18)
        response = await client.post(
            "/api/v1/auth/users",
            json={"username": username, "password": password, "full_name": "Bench Agent", "roles": ["agent"]},
            headers={"Authorization": f"Bearer {admin}"},
        )
        response.raise_for_status()
        return await password_token(client, username, password), password
