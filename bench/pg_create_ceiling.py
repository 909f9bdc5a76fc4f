"""Benchmark: what PostgreSQL alone does with the create's statement on this machine, against the bare app's INSERT.

The ceiling of issue 10's create figure as far as the database goes. pgbench (PostgreSQL's own C client, so the load
costs little) runs, on a scratch database migrated with the incident service's real migrations:

- the service's create: the statement `Records.create` sends (the incident row, its two SLA clocks, its outbox event
  with the number written into it), captured from `incident.service.open_incident` itself, alone, as the service
  sends it (a create with nothing before it is its transaction's one statement: `driver_connection(sole=True)`);
  each run gives it new ids (`gen_random_uuid()`), so every transaction inserts a new incident;
- the bare app's INSERT ... RETURNING (bench/benchlib/bare_app.py), as it sends it: one statement, autocommit.

32 clients, 2 threads, prepared statements (as asyncpg prepares them), 8 s per run, alternating bare and service,
2 rounds. Prints transactions per second and PostgreSQL's CPU milliseconds per transaction (every `postgres`
process of the machine, from /proc), and the ratio. The scratch database is dropped at the end, also on failure.

    uv run python bench/pg_create_ceiling.py [--seconds 8] [--rounds 2] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import bare_app
from benchlib.common import stack_module
from benchlib.machine import machine_line
from benchlib.scratch import bench_settings, plain_dsn
from benchlib.table import Summary

PGBENCH_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


def pgbench() -> str:
    for directory in PGBENCH_DIRS:
        if os.access(f"{directory}/pgbench", os.X_OK):
            return f"{directory}/pgbench"
    found = shutil.which("pgbench")
    if found is None:
        raise SystemExit("pgbench not found (Debian: postgresql-15, or postgresql-client with contrib)")
    return found


# ---------------------------------------------------------------- the statements


async def service_create(app_dsn: str, principal: uuid.UUID) -> tuple[str, list[Any]]:
    """The statement and parameters `open_incident` sends for the issue's body, captured instead of executed."""
    from incident import service
    from incident.schemas import IncidentCreate
    from itsm_shared import records
    from itsm_shared.auth import Principal, Role
    from itsm_shared.db import make_engine, session_factory

    captured: list[tuple[str, tuple[Any, ...]]] = []

    class Capture:
        async def fetchrow(self, sql: str, *params: Any) -> dict[str, Any]:
            captured.append((sql, params))
            return {"id": params[0], "number": "INC0000001"}

    async def driver_connection(_: Any, *, sole: bool = False) -> Capture:
        return Capture()

    records.driver_connection = driver_connection  # type: ignore[assignment]
    engine = make_engine(app_dsn, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            body = IncidentCreate(
                title="VPN times out",
                description="users cannot connect",
                impact=2,
                urgency=2,
                category="network",
                configuration_item="vpn-gw-1",
            )
            await service.open_incident(session, body, Principal(id=principal, roles=frozenset({Role.AGENT})))
    finally:
        await engine.dispose()
    sql, params = captured[0]
    return sql, list(params)


def literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime | uuid.UUID):
        return "'" + str(value) + "'"
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(literal(v) for v in value) + "]" if value else "'{}'"
    return "'" + str(value).replace("'", "''") + "'"


def with_fresh_ids(sql: str, params: list[Any], keep: uuid.UUID) -> str:
    """The statement with its parameters written in, every id but `keep` (the principal: caller and creator)
    replaced by a new one per transaction, from a CTE of gen_random_uuid() values the statement reads."""
    ids: dict[uuid.UUID, str] = {}

    def written(value: Any) -> str:
        if isinstance(value, uuid.UUID) and value != keep:
            name = ids.setdefault(value, f"u{len(ids)}")
            return f"(SELECT {name} FROM fresh)"
        if isinstance(value, list) and value and all(isinstance(v, uuid.UUID) for v in value):
            return "ARRAY[" + ", ".join(written(v) for v in value) + "]"
        return literal(value)

    body = re.sub(r"\$(\d+)", lambda m: written(params[int(m.group(1)) - 1]), sql)
    assert body.startswith("WITH ")
    columns = ", ".join(f"gen_random_uuid() AS {name}" for name in ids.values())
    return f"WITH fresh AS MATERIALIZED (SELECT {columns}), {body[len('WITH ') :]}"


BARE_SCRIPT = "WITH fresh AS MATERIALIZED (SELECT gen_random_uuid() AS u0) " + bare_app.INSERT.strip().replace(
    "VALUES ($1,", "SELECT (SELECT u0 FROM fresh),"
).replace("$12)", "$12 FROM fresh")


def bare_statement() -> str:
    values = [
        "VPN times out",
        "users cannot connect",
        bare_app.CALLER,
        "network",
        "vpn-gw-1",
        2,
        2,
        3,
        None,
        None,
        bare_app.CALLER,
    ]
    return re.sub(r"\$(\d+)", lambda m: literal(values[int(m.group(1)) - 2]), BARE_SCRIPT)


# ---------------------------------------------------------------- running pgbench


def postgres_cpu_seconds() -> float:
    """CPU of every `postgres` process, with what the postmaster's ended children used (pgbench's backends end
    with their connections, before a second look at /proc could see them)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if name == "postgres":
            total += sum(int(v) for v in rest[11:15])  # utime, stime, cutime, cstime
    return total / ticks


def run_pgbench(dsn: str, script: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(transactions per second, PostgreSQL CPU ms per transaction)."""
    before = postgres_cpu_seconds()
    out = subprocess.run(
        [
            pgbench(),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(args.clients),
            "-j",
            "2",
            "-T",
            str(args.seconds),
            "-f",
            str(script),
            dsn,
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PGOPTIONS": "-c search_path=incident,public"},
    ).stdout
    cpu = postgres_cpu_seconds() - before
    transactions = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))  # type: ignore[union-attr]
    return tps, 1000 * cpu / transactions if transactions else float("nan")


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=8, help="seconds per pgbench run (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of bare/service runs (default 2)")
    parser.add_argument("--clients", type=int, default=32, help="pgbench clients (default 32)")
    args = parser.parse_args()
    from itsm_shared.provision import app_url

    run_dir = Path(tempfile.mkdtemp(prefix="itsm-bench-pg-"))
    settings = bench_settings(run_dir, services=("incident",))
    stack = stack_module.Stack(settings)
    summary = Summary("pg_create_ceiling")
    print("== PostgreSQL alone: the create's statement against the bare INSERT, pgbench ==")
    print(machine_line())
    try:
        print(f"scratch database {settings.database_name}: migrating the incident schema ...", flush=True)
        stack.migrate("incident")
        admin = plain_dsn(settings.database_url)
        asyncio.run(bare_app.create_schema(admin))
        principal = uuid.uuid4()
        sql, params = asyncio.run(service_create(app_url(settings.database_url, "incident"), principal))
        scripts = {
            "bare": run_dir / "bare.sql",
            "service": run_dir / "service.sql",
        }
        scripts["bare"].write_text(bare_statement() + ";\n")
        scripts["service"].write_text(with_fresh_ids(sql, params, principal) + ";\n")
        print(f"the service's statement ({len(sql)} characters, {len(params)} parameters), as run:")
        print("  " + scripts["service"].read_text().replace("\n", "\n  ")[:600] + " ...")
        results: dict[str, list[tuple[float, float]]] = {"bare": [], "service": []}
        for round_number in range(1, args.rounds + 1):
            for name in ("bare", "service"):
                tps, cpu = run_pgbench(admin, scripts[name], args)
                results[name].append((tps, cpu))
                print(f"  round {round_number} {name:<8} {tps:8.1f} transactions/s  PostgreSQL {cpu:.2f} ms CPU each")
        bare_tps = sum(t for t, _ in results["bare"]) / args.rounds
        ours_tps = sum(t for t, _ in results["service"]) / args.rounds
        bare_cpu = sum(c for _, c in results["bare"]) / args.rounds
        ours_cpu = sum(c for _, c in results["service"]) / args.rounds
        summary.add(
            f"PostgreSQL alone, pgbench -c{args.clients}: creates/s (the service's statement)",
            f"{ours_tps:,.0f}",
            f"{bare_tps:,.0f}",
            f"{ours_tps / bare_tps:.2f}",
            "—",
            None,
        )
        summary.add(
            "PostgreSQL CPU ms per create (pgbench)",
            f"{ours_cpu:.2f}",
            f"{bare_cpu:.2f}",
            f"{ours_cpu / bare_cpu:.1f}x the bare",
            "—",
            None,
        )
        summary.finish()
        return 0
    finally:
        asyncio.run(_drop(settings))
        shutil.rmtree(run_dir, ignore_errors=True)


async def _drop(settings: Any) -> None:
    from benchlib.scratch import drop_scratch_database

    await drop_scratch_database(settings.admin_database_url, settings.database_name)


if __name__ == "__main__":
    sys.exit(main())
