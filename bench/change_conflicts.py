"""Benchmark: the change service's scheduling conflict check and next-slot with 100,000 scheduled changes.

Builds a scratch database with the change service's real migrations (`python -m itsm_shared.migrate change`),
loads N scheduled changes straight into its schema with INSERT ... SELECT generate_series (seeded, so every
run is the same): planned windows of 1 to 4 hours starting anywhere in two years, on 1 to 3 of 2,000
configuration items; 10 % of them in `implement`, plus N/2 closed changes that hold nothing. Blackout windows:
one global weekly freeze (Friday 18:00 to Monday 06:00 Europe/Berlin, RRULE) and 200 one-off windows scoped
to random items. Then VACUUM ANALYZE.

Measured with the service's own code, as the service's login role, one call at a time after a warm-up:

1. the conflict check of a PATCH to scheduled (`scheduling.lock_items` + `scheduling.conflicts`, in a
   transaction rolled back after each call): a random 2-hour window on 1 to 3 random items;
2. the overlap query alone (`scheduling.overlapping_changes`);
3. `scheduling.next_slot` for a random 2-hour change on 1 to 3 random items from a random moment;
4. GET /api/v1/changes/{id}/conflicts through the real app in-process (ASGI, no network, a test token).

It prints p50/p95/p99 per case against the target (conflict check p95 <= 10 ms), then EXPLAIN (ANALYZE,
BUFFERS) of the overlap statement the service builds (`scheduling.overlap_statement`) as a custom and as a
generic plan, showing the GiST and GIN indexes. The scratch database and exchange are removed at the end,
also on failure or Ctrl-C.

    uv run python bench/change_conflicts.py [--changes 100000] [--calls 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from itsm_shared.db import asyncpg_dsn, make_engine, session_factory
from itsm_shared.provision import app_url
from itsm_shared.testing import TestIssuer, create_database, drop_database, remove_topology, test_names
from sqlalchemy import text
from sqlalchemy.dialects import postgresql

warnings.filterwarnings("ignore", message=r"(?s).*You probably want to use .session.exec")

SERVER = os.environ.get("ITSM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("ITSM_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ITEMS = 2000
SPAN_START = datetime(2031, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=730)
TARGET_CHECK_P95_MS = 10.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def report(name: str, values: list[float], target: float | None = None) -> None:
    p50, p95, p99 = (percentile(values, q) for q in (50, 95, 99))
    line = f"{name:<46} n={len(values):<5} p50={p50:6.2f} ms  p95={p95:6.2f} ms  p99={p99:6.2f} ms"
    if target is not None:
        line += f"   target p95 <= {target:g} ms: {'met' if p95 <= target else 'MISSED'}"
    print(line, flush=True)


def migrate(admin_url: str) -> None:
    env = {**os.environ, "ITSM_DATABASE_URL": admin_url}
    result = subprocess.run(
        [sys.executable, "-m", "itsm_shared.migrate", "change"], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"migration failed:\n{result.stderr}")


LOAD = """
INSERT INTO change_request (id, type, title, status, approval, risk, configuration_items, planned_start,
                            planned_end, requested_by, implementation_plan, backout_plan, created_at, updated_at)
SELECT gen_random_uuid(), 'standard', 'bench change ' || g,
       CASE WHEN g % 10 = 0 THEN 'implement' ELSE 'scheduled' END, 'not_required', 'low',
       ARRAY(SELECT 'ci-' || lpad((1 + floor(random() * $3))::int::text, 4, '0')
             FROM generate_series(1, 1 + (g % 3))),
       s, s + make_interval(hours => 1 + (g % 4)),
       '00000000-0000-0000-0000-000000000001', 'p', 'b', now(), now()
FROM (SELECT g, $1::timestamptz + random() * $2::interval AS s FROM generate_series(1, $4) AS g) AS x;
"""


async def load(admin_url: str, changes: int) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await conn.execute("SET ROLE change_owner; SET search_path TO change")
        started = time.perf_counter()
        await conn.execute("SELECT setseed(0.42)")
        statement = LOAD
        await conn.execute(statement, SPAN_START, SPAN, ITEMS, changes)
        await conn.execute(
            statement.replace("CASE WHEN g % 10 = 0 THEN 'implement' ELSE 'scheduled' END", "'closed'"),
            SPAN_START,
            SPAN,
            ITEMS,
            changes // 2,
        )
        await conn.execute(
            """INSERT INTO blackout_window (id, name, timezone, starts_at, ends_at, rrule, created_by)
               VALUES (gen_random_uuid(), 'weekend freeze', 'Europe/Berlin', '2031-01-03 18:00', '2031-01-06 06:00',
                       'FREQ=WEEKLY;BYDAY=FR', '00000000-0000-0000-0000-000000000001')"""
        )
        await conn.execute(
            """INSERT INTO blackout_window (id, name, timezone, starts_at, ends_at, configuration_items, created_by)
               SELECT gen_random_uuid(), 'scoped ' || g, 'UTC', s, s + interval '12 hours',
                      ARRAY['ci-' || lpad((1 + floor(random() * $3))::int::text, 4, '0')],
                      '00000000-0000-0000-0000-000000000001'
               FROM (SELECT g, ($1::timestamptz + random() * $2::interval) AT TIME ZONE 'UTC' AS s
                     FROM generate_series(1, 200) AS g) AS x""",
            SPAN_START,
            SPAN,
            ITEMS,
        )
        await conn.execute("RESET ROLE")
        await conn.execute("VACUUM ANALYZE change.change_request")
        await conn.execute("VACUUM ANALYZE change.blackout_window")
        count = await conn.fetchval(
            "SELECT count(*) FROM change.change_request WHERE status IN ('scheduled', 'implement')"
        )
        print(
            f"loaded {count:,} scheduled/implementing changes (+{changes // 2:,} closed), 201 blackout windows "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    finally:
        await conn.close()


def random_items(rng: random.Random) -> list[str]:
    return [f"ci-{rng.randint(1, ITEMS):04d}" for _ in range(rng.randint(1, 3))]


def random_moment(rng: random.Random) -> datetime:
    return (SPAN_START + timedelta(seconds=rng.uniform(0, SPAN.total_seconds()))).replace(second=0, microsecond=0)


async def timed(calls: int, warmup: int, one: Callable[[int], Awaitable[Any]]) -> list[float]:
    for i in range(warmup):
        await one(-1 - i)
    out = []
    for i in range(calls):
        started = time.perf_counter()
        await one(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _literal(value: Any) -> str:
    """A bench-made parameter as an SQL literal, for EXPLAIN EXECUTE (which takes no bind parameters)."""
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]::text[]"
    if isinstance(value, uuid.UUID):
        return f"'{value}'::uuid"
    return "'" + str(value).replace("'", "''") + "'"


async def explain(database_app_url: str, statement: Any) -> None:
    """EXPLAIN the statement as asyncpg sends it (custom plan, parameters known), and as a prepared statement
    planned once for any parameters (the generic plan PostgreSQL may switch to after five executions)."""
    compiled = statement.compile(dialect=postgresql.asyncpg.dialect())
    sql = str(compiled)
    params = [compiled.params[name] for name in compiled.positiontup]
    arguments = ", ".join(_literal(value) for value in params)
    conn = await asyncpg.connect(asyncpg_dsn(database_app_url))
    try:
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
        print("\nEXPLAIN (ANALYZE, BUFFERS), custom plan:")
        for row in rows:
            print("   ", row[0])
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE overlap AS {sql}")
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE overlap({arguments})")
        print("\nEXPLAIN (ANALYZE, BUFFERS), generic plan (PREPARE, plan_cache_mode = force_generic_plan):")
        for row in rows:
            print("   ", row[0])
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    from change import scheduling  # imported late: its settings are read at import of the app only

    db = await create_database(SERVER, "itsm_bench_change")
    names = test_names()
    try:
        print(f"scratch database {db.name}; {os.cpu_count()} CPUs", flush=True)
        migrate(db.admin_url)
        await load(db.admin_url, args.changes)
        url = app_url(db.admin_url, "change")
        engine = make_engine(url, pool_size=2)
        sessions = session_factory(engine)
        rng = random.Random(7)
        found: list[int] = []

        async def in_transaction(step: Callable[[Any], Awaitable[Any]]) -> float:
            """Time `step` inside an open transaction, as in a PATCH (whose session, row lock and commit are
            not part of the check); rolled back after."""
            async with sessions() as session, session.begin():
                await session.execute(text("SELECT 1"))
                started = time.perf_counter()
                await step(session)
                elapsed = (time.perf_counter() - started) * 1000
                await session.rollback()
            return elapsed

        async def check(session: Any) -> None:
            start, cis = random_moment(rng), random_items(rng)
            await scheduling.lock_items(session, cis)
            result = await scheduling.conflicts(
                session, exclude=None, start=start, end=start + timedelta(hours=2), cis=cis, blackouts_block=True
            )
            found.append(len(result))

        async def locks(session: Any) -> None:
            await scheduling.lock_items(session, random_items(rng))

        async def overlap(session: Any) -> None:
            start = random_moment(rng)
            await scheduling.overlapping_changes(
                session, exclude=None, start=start, end=start + timedelta(hours=2), cis=random_items(rng)
            )

        async def blackouts(session: Any) -> None:
            start = random_moment(rng)
            windows = await scheduling.blackouts_for(session, random_items(rng))
            end = start + timedelta(hours=2)
            if hasattr(scheduling, "expand"):  # occurrences expanded first, then turned into conflicts
                scheduling.blackout_conflicts(await scheduling.expand(windows, start, end), blocking=True)
            else:
                scheduling.blackout_conflicts(windows, start, end, blocking=True)

        async def whole(_: int) -> None:
            async with sessions() as session, session.begin():
                await check(session)
                await session.rollback()

        async def slot(_: int) -> None:
            async with sessions() as session:
                await scheduling.next_slot(
                    session,
                    exclude=None,
                    cis=random_items(rng),
                    duration=timedelta(hours=2),
                    after=random_moment(rng),
                    until=SPAN_START + SPAN + timedelta(days=90),
                    blackouts_block=True,
                )

        async def series(step: Callable[[Any], Awaitable[Any]]) -> list[float]:
            for _ in range(args.calls // 10):
                await in_transaction(step)
            return [await in_transaction(step) for _ in range(args.calls)]

        load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"\nservice code, one call at a time ({args.calls} calls after {args.calls // 10} warm-up; "
            f"load average {load_avg}):",
            flush=True,
        )
        report("conflict check (locks + changes + blackouts)", await series(check), TARGET_CHECK_P95_MS)
        print(f"{'':<46} conflicts per check: mean {statistics.mean(found):.2f}, max {max(found)}")
        report("  of which: advisory locks", await series(locks))
        report("  of which: overlap query", await series(overlap))
        report("  of which: blackout query + RRULE expansion", await series(blackouts))
        report("check with session, BEGIN and ROLLBACK", await timed(args.calls, args.calls // 10, whole))
        report("next-slot (2 h, 1-3 items, weekly freeze)", await timed(args.calls, args.calls // 10, slot))
        await http(args, url, names, engine, rng)
        print("\nthe overlap statement the service builds, for one random check:")
        start = random_moment(rng)
        await explain(
            url,
            scheduling.overlap_statement(
                exclude=None, start=start, end=start + timedelta(hours=2), cis=random_items(rng)
            ),
        )
        await engine.dispose()
        print(
            "\nWhat limits it: the check is three round trips on one connection (the advisory locks, the overlap "
            "query, the blackout windows) plus SQLAlchemy's statement compilation and row handling and the RRULE "
            "expansion in Python; the index scans themselves take well under a millisecond. next-slot is one overlap "
            "query per 7-day chunk it sweeps plus the expansion of the weekly freeze in each chunk."
        )
    finally:
        await drop_database(db)
        await remove_topology(AMQP, names["exchange"], names["dead_letter_exchange"])


async def http(args: argparse.Namespace, url: str, names: dict[str, Any], engine: Any, rng: random.Random) -> None:
    import httpx

    os.environ.update(
        {
            "ITSM_DATABASE_URL": url,
            "ITSM_AMQP_URL": AMQP,
            "ITSM_EXCHANGE": names["exchange"],
            "ITSM_DEAD_LETTER_EXCHANGE": names["dead_letter_exchange"],
            "ITSM_LOG_LEVEL": "WARNING",
        }
    )
    from change.config import get_settings

    get_settings.cache_clear()
    from change.main import app

    async with engine.connect() as conn:
        ids = [
            str(r[0])
            for r in (
                await conn.execute(
                    text("SELECT id FROM change_request WHERE status = 'scheduled' ORDER BY id LIMIT 2000")
                )
            ).all()
        ]
    issuer = TestIssuer()
    headers = {"Authorization": f"Bearer {issuer.token('agent', subject=uuid.uuid4())}"}
    async with app.router.lifespan_context(app):
        app.state.verifier = issuer.verifier()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://change.bench") as client:

            async def get(_: int) -> None:
                response = await client.get(f"/api/v1/changes/{rng.choice(ids)}/conflicts", headers=headers)
                assert response.status_code == 200, response.text

            print()
            report("GET …/conflicts, in-process ASGI", await timed(args.calls, args.calls // 10, get))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted; scratch database removed")


if __name__ == "__main__":
    main()
