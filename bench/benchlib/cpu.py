"""CPU accounting from /proc: the CPU seconds of each group of processes (the stack's services, PostgreSQL,
RabbitMQ, the load generator) between two snapshots, with the machine's interrupts and the rest of its busy
time."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itsm_shared.relay_process import RELAY_COMM

from benchlib.machine import CPUS

CLK_TCK = os.sysconf("SC_CLK_TCK")


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
RELAY_SUFFIX = " relay"
OTHER = "~"  # prefix of the groups of processes that are not ours: "~<command>"


def is_ours(group: str) -> bool:
    return group not in (MACHINE, INTERRUPTS, NOT_OURS) and not group.startswith(OTHER)


@dataclass
class CpuMeter:
    """CPU seconds used between two snapshots, per group of processes, from /proc/<pid>/stat (utime + stime).

    - `groups`: name -> process group id. The stack starts every service, Traefik and the bare app in a
      session of its own, so its pid is its group: every process and thread of it is counted.
      A service's outbox relay process counts apart, as "<service> relay".
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
                if stat.comm == RELAY_COMM:  # a service's outbox relay process (itsm_shared.relay_process)
                    group += RELAY_SUFFIX
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
