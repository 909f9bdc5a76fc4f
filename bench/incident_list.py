"""Benchmark: listing incidents (GET /api/v1/incidents) with 1,000,000 incidents in the database, one client.

Builds a scratch database with the incident service's real migrations (`python -m itsm_shared.migrate
incident`), loads the incidents straight into its schema with INSERT ... SELECT generate_series (indexes
dropped during the load and rebuilt from their own definitions afterwards, then VACUUM ANALYZE; about 2
minutes on 2 cores), two SLA clocks per incident, and starts auth + incident + Traefik on it (deploy/stack.py;
the gateway's API rate limit lifted, the incident auto-close turned off so no background job rewrites rows while
it measures). The data, seeded so every run is the same: created_at spread over two years; the last 14 days
mostly open, older incidents mostly closed with a 4 % backlog still open; impact/urgency skewed to low,
priority from the matrix; 40 components x 20 symptoms x 10 sites in title and description (full-text), 12
categories, 5,000 callers, 20 groups, 300 agents; response and resolution clocks running, paused or stopped
according to the status.

Measured over HTTP with an agent's token, one request at a time (after a warm-up), through the gateway and
directly on the incident service's port: the first page; a filtered page (status=in_progress&priority=2); the
page 10,000 rows deep (walking the keyset cursor there, then fetching that same page repeatedly); the oldest
open low-priority incidents (sort=created_at, status=new, priority=4), whose business-hours SLA clocks have run
for up to two years; full-text queries, a selective and a broad one. The baseline, for the first three: the
bare app (bench/benchlib/bare_app.py, `GET /incidents`) reading the same table, one SELECT of 50 rows by the
(created_at, id) index (its own keyset cursor for the deep page), no token, no SLA clocks. p50/p95 per case
against the targets of issue 10 (any page p95 <= 15 ms; full text p95 <= 50 ms), then EXPLAIN (ANALYZE,
BUFFERS) of the SQL behind each case: the statement is built by the service's own code (its list_incidents with
a session that records instead of executing), compiled for asyncpg and explained as the service's role with the
same parameters; when the service's code no longer fits that call, EXPLAIN is skipped and says why. Ends with
the summary table (also kept in build/bench/ for `make bench`). Everything started is stopped and the scratch
database dropped, also on failure or Ctrl-C.

    uv run python bench/incident_list.py [--rows 1000000] [--requests 200] [--depth 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.common import (
    CPUS,
    INCIDENT_QUEUES,
    Summary,
    agent_token,
    bench_settings,
    cleanup,
    ignore_signals,
    load_average,
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
    verdict,
)

RATE_LIMIT = 1_000_000
PAGE_TARGET_P95 = 0.015
TEXT_TARGET_P95 = 0.050
DEPTH = 10_000
WARMUP_REQUESTS = 10
SLOW_CASE_SECONDS = 0.2  # a case slower than this per request is measured with fewer requests
SLOW_CASE_REQUESTS = 30
OLDEST_OPEN_P4 = {"sort": "created_at", "status": "new", "priority": 4}

COMPONENTS = [
    "VPN", "email", "printer", "laptop", "Wi-Fi", "Outlook", "SAP", "payroll", "CRM", "database",
    "network share", "desk phone", "monitor", "docking station", "SSO", "Teams", "SharePoint", "Jira",
    "badge reader", "firewall", "backup", "Citrix", "Excel", "browser", "antivirus", "scanner", "projector",
    "keyboard", "headset", "webcam", "intranet", "DNS", "DHCP", "load balancer", "Kubernetes", "storage",
    "mailbox", "calendar", "license server", "ERP",
]  # fmt: skip
SYMPTOMS = [
    "is not working", "is very slow", "keeps crashing", "times out", "shows an error", "cannot connect",
    "login fails", "freezes", "disconnects repeatedly", "returns server errors", "is unreachable",
    "has missing data", "fails to sync", "denies permission", "certificate expired", "is out of disk space",
    "uses too much CPU", "hangs on startup", "shows a blue screen", "gives wrong results",
]  # fmt: skip
SITES = ["Berlin", "London", "New York", "Paris", "Madrid", "Tokyo", "Sydney", "Toronto", "Mumbai", "Singapore"]
CATEGORIES = [
    "hardware", "software", "network", "database", "access", "email", "telephony", "security", "storage",
    "printing", "inquiry", "facilities",
]  # fmt: skip


def _array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


LOAD_INCIDENTS = f"""
INSERT INTO incident.incident (
    id, number, title, description, caller_id, category, configuration_item, impact, urgency, priority, status,
    hold_reason, assignment_group, assignee_id, resolution_code, resolution_notes, reopen_count, sla_breached,
    created_by, created_at, updated_at, resolved_at, closed_at, version)
WITH base AS (
    SELECT g.i,
           now() - random() * interval '730 days' AS created,
           random() AS r_status, random() AS r_impact, random() AS r_urgency, random() AS r_took,
           1 + floor(random() * 40)::int AS c, 1 + floor(random() * 20)::int AS sy, 1 + floor(random() * 10)::int AS st,
           floor(random() * 5000)::int AS caller_n, 1 + floor(random() * 12)::int AS cat,
           floor(random() * 20)::int AS grp_n, floor(random() * 300)::int AS agent_n,
           floor(random() * 20000)::int AS err, floor(random() * 4)::int AS hold_n
    FROM generate_series(1, $1::int) AS g(i)
), shaped AS (
    SELECT b.*,
           CASE WHEN r_impact < 0.15 THEN 1 WHEN r_impact < 0.5 THEN 2 ELSE 3 END AS impact,
           CASE WHEN r_urgency < 0.15 THEN 1 WHEN r_urgency < 0.5 THEN 2 ELSE 3 END AS urgency,
           CASE WHEN created > now() - interval '14 days' THEN
                CASE WHEN r_status < 0.25 THEN 'new' WHEN r_status < 0.60 THEN 'in_progress'
                     WHEN r_status < 0.70 THEN 'on_hold' WHEN r_status < 0.85 THEN 'resolved'
                     WHEN r_status < 0.97 THEN 'closed' ELSE 'cancelled' END
           ELSE
                CASE WHEN r_status < 0.010 THEN 'new' WHEN r_status < 0.025 THEN 'in_progress'
                     WHEN r_status < 0.040 THEN 'on_hold' WHEN r_status < 0.940 THEN 'closed' ELSE 'cancelled' END
           END AS status,
           ({_array(COMPONENTS)})[c] AS comp, ({_array(SYMPTOMS)})[sy] AS symp, ({_array(SITES)})[st] AS site
    FROM base b
), timed AS (
    SELECT s.*,
           (ARRAY[1, 2, 3, 2, 3, 4, 3, 4, 5])[(impact - 1) * 3 + urgency] AS priority,
           CASE WHEN status IN ('resolved', 'closed')
                THEN least(created + r_took * interval '5 days', now()) END AS resolved,
           CASE WHEN status = 'closed' THEN least(created + r_took * interval '5 days' + interval '7 days', now())
                WHEN status = 'cancelled' THEN least(created + r_took * interval '2 days', now()) END AS closed
    FROM shaped s
)
SELECT gen_random_uuid(),
       'INC' || lpad(i::text, 7, '0'),
       comp || ' ' || symp || ' (' || site || ')',
       'User reports that the ' || comp || ' ' || symp || ' at the ' || site || ' office since '
           || to_char(created, 'FMDay HH24:MI') || '. Error code ERR-' || err
           || '. Restarting did not help; colleagues nearby see the same. Please investigate.',
       md5('caller' || caller_n)::uuid,
       ({_array(CATEGORIES)})[cat],
       'CI-' || lpad((caller_n % 900)::text, 4, '0'),
       impact, urgency, priority, status,
       CASE WHEN status = 'on_hold'
            THEN (ARRAY['awaiting_caller', 'awaiting_change', 'awaiting_problem', 'awaiting_vendor'])[1 + hold_n] END,
       'group-' || grp_n,
       CASE WHEN status <> 'new' THEN md5('agent' || agent_n)::uuid END,
       CASE WHEN resolved IS NOT NULL THEN 'solved' END,
       CASE WHEN resolved IS NOT NULL THEN 'Fixed the ' || comp || '; confirmed with the caller.' END,
       0,
       status IN ('new', 'in_progress', 'on_hold') AND created < now() - interval '3 days',
       md5('caller' || caller_n)::uuid,
       created,
       greatest(created, resolved, closed),
       resolved,
       closed,
       CASE WHEN status = 'new' THEN 1 ELSE 3 END
FROM timed
"""

# Two clocks per incident, from its policy. Running clocks past due are marked warned and breached with nothing
# left to fire (the state the SLA scheduler leaves them in); due moments use wall-clock time (approximate for
# business-hours calendars, and only read back by the list, never recomputed there).
LOAD_CLOCKS = """
INSERT INTO incident.sla_clock (
    id, incident_id, kind, target_seconds, calendar, state, started_at, pauses, due_at, warning_at, stopped_at,
    warned, breached, next_fire_at)
WITH c AS (
    SELECT i.id AS incident_id, k.kind,
           CASE WHEN k.kind = 'response' THEN p.response_minutes ELSE p.resolution_minutes END * 60.0 AS target,
           p.calendar, i.created_at AS started,
           CASE WHEN k.kind = 'response' THEN CASE WHEN i.status = 'new' THEN 'running' ELSE 'stopped' END
                WHEN i.status IN ('new', 'in_progress') THEN 'running'
                WHEN i.status = 'on_hold' THEN 'paused'
                ELSE 'stopped' END AS state,
           CASE WHEN k.kind = 'response'
                THEN least(i.created_at + random() * interval '2 hours', now())
                ELSE coalesce(i.resolved_at, i.closed_at, now()) END AS stop_at,
           least(i.created_at + interval '2 hours', now()) AS paused_from
    FROM incident.incident i
    JOIN incident.sla_policy p ON p.priority = i.priority
    CROSS JOIN (VALUES ('response'), ('resolution')) AS k(kind)
), d AS (
    SELECT c.*, started + target * interval '1 second' AS due,
           started + 0.75 * target * interval '1 second' AS warning
    FROM c
)
SELECT gen_random_uuid(), incident_id, kind, target, calendar, state, started,
       CASE WHEN state = 'paused' THEN jsonb_build_array(jsonb_build_array(to_jsonb(paused_from), NULL))
            ELSE '[]'::jsonb END,
       due,
       CASE WHEN state = 'paused' THEN NULL ELSE warning END,
       CASE WHEN state = 'stopped' THEN stop_at END,
       CASE WHEN state = 'stopped' THEN stop_at > warning ELSE now() >= warning END,
       CASE WHEN state = 'stopped' THEN stop_at > due ELSE now() >= due END,
       CASE WHEN state = 'running' AND now() < warning THEN warning
            WHEN state = 'running' AND now() < due THEN due END
FROM d
"""

SECONDARY_INDEXES = """
SELECT i.relname AS name, pg_get_indexdef(i.oid) AS definition
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'incident' AND t.relname IN ('incident', 'sla_clock')
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
ORDER BY i.relname
"""


async def load(admin_dsn: str, rows: int) -> None:
    import asyncpg

    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(
            "SET TIME ZONE 'UTC'; SET maintenance_work_mem = '512MB'; SET session_replication_role = replica"
        )
        await connection.execute("SELECT setseed(0.42)")
        indexes = await connection.fetch(SECONDARY_INDEXES)
        for index in indexes:
            await connection.execute(f'DROP INDEX incident."{index["name"]}"')
        steps: list[tuple[str, str, tuple[Any, ...]]] = [
            (f"{rows:,} incidents", LOAD_INCIDENTS, (rows,)),
            (f"{2 * rows:,} SLA clocks", LOAD_CLOCKS, ()),
            ("number sequence", "SELECT setval('incident.incident_number_seq', $1::bigint)", (rows,)),
        ]
        steps += [(f"index {i['name']}", i["definition"], ()) for i in indexes]
        steps += [
            ("VACUUM ANALYZE incident", "VACUUM (ANALYZE) incident.incident", ()),
            ("VACUUM ANALYZE sla_clock", "VACUUM (ANALYZE) incident.sla_clock", ()),
        ]
        for what, sql, params in steps:
            started = time.monotonic()
            await connection.execute(sql, *params)
            print(f"  {what}: {time.monotonic() - started:.1f} s", flush=True)
        sizes = await connection.fetch(
            "SELECT c.relname, pg_size_pretty(pg_table_size(c.oid)) AS heap, "
            "pg_size_pretty(pg_indexes_size(c.oid)) AS indexes FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'incident' AND c.relname IN ('incident', 'sla_clock') ORDER BY 1"
        )
        for size in sizes:
            print(f"  size of {size['relname']}: table {size['heap']}, indexes {size['indexes']}")
        counts = await connection.fetch(
            "SELECT status, count(*) AS n FROM incident.incident GROUP BY status ORDER BY count(*) DESC"
        )
        print("  by status: " + ", ".join(f"{c['status']} {c['n']:,}" for c in counts))
        settings = await connection.fetch(
            "SELECT name, current_setting(name) AS value FROM pg_settings WHERE name IN "
            "('shared_buffers', 'work_mem', 'effective_cache_size', 'random_page_cost', 'jit')"
        )
        print("  server: " + ", ".join(f"{s['name']}={s['value']}" for s in settings))
    finally:
        await connection.close()


# ---------------------------------------------------------------- the service's own SQL, for EXPLAIN


class _NoRows:
    def all(self) -> list[Any]:
        return []


class RecordingSession:
    """Stands in for the AsyncSession: records the statements the service code would run."""

    def __init__(self) -> None:
        self.statements: list[Any] = []

    async def exec(self, statement: Any) -> _NoRows:
        self.statements.append(statement)
        return _NoRows()


def _service_function(name: str) -> Any:
    """incident.queries.<name>, or incident.service.<name> in older layouts; the service's code is being
    reworked, so EXPLAIN is skipped (with the reason) when neither fits."""
    import importlib

    for module in ("incident.queries", "incident.service"):
        with contextlib.suppress(ImportError):
            found = getattr(importlib.import_module(module), name, None)
            if found is not None:
                return found
    raise LookupError(f"no {name} in incident.queries or incident.service")


def router_filters(params: dict[str, Any]) -> dict[str, Any]:
    """The filter dict incident.router.list_incidents builds from the query string."""
    raw = params.get("status")
    statuses = [s for s in raw.split(",") if s] if raw else None
    names = ("priority", "assignee_id", "assignment_group", "category", "caller_id", "problem_id")
    filters: dict[str, Any] = {"status": statuses, **{n: params.get(n) for n in names}}
    return filters | {"created_after": None, "created_before": None, "sla_breached": None, "q": params.get("q")}


def _compiled(statement: Any) -> tuple[str, list[Any]]:
    from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

    compiled = statement.compile(dialect=asyncpg_dialect.dialect(), compile_kwargs={"render_postcompile": True})
    return str(compiled), [compiled.params[name] for name in compiled.positiontup]


async def service_sql(params: dict[str, Any]) -> tuple[str, list[Any]]:
    """The list query and its parameters, as the service builds them for these query parameters."""
    from incident import queries
    from itsm_shared.auth import Principal, Role
    from itsm_shared.pagination import parse_sort

    session = RecordingSession()
    principal = Principal(id=uuid.uuid4(), roles=frozenset({Role.AGENT}))
    await _service_function("list_incidents")(
        session,
        principal,
        sort=parse_sort(params.get("sort", "-created_at"), queries.SORTS),
        limit=int(params.get("limit", 50)),
        cursor=params.get("cursor"),
        filters=router_filters(params),
    )
    return _compiled(session.statements[0])


async def clocks_sql(ids: list[uuid.UUID]) -> tuple[str, list[Any]]:
    session = RecordingSession()
    await _service_function("clocks_of")(session, ids)
    return _compiled(session.statements[0])


UUID_LIST_RE = re.compile(r"\{[0-9a-f-]{36}(?:,[0-9a-f-]{36})+\}")
INDEX_RE = re.compile(r"(?:Index(?: Only)? Scan(?: Backward)? using|Bitmap Index Scan on) (\w+)")
NODE_RE = re.compile(r"^\s*(?:->\s*)?([A-Z][A-Za-z ]+?)(?: using \w+| on \w+)?(?: on \w+)?\s+\(")


def plan_shape(lines: list[str]) -> list[str]:
    return [m.group(0).split("(")[0].strip() for line in lines if (m := NODE_RE.match(line))]


async def explain(app_dsn: str, sql: str, values: list[Any], *, generic: bool = False) -> list[str]:
    import asyncpg

    connection = await asyncpg.connect(app_dsn)
    try:
        if generic:
            await connection.execute("SET plan_cache_mode = force_generic_plan")
        rows = await connection.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *values)
    finally:
        await connection.close()
    return [r[0] for r in rows]


def condensed(sql: str) -> str:
    text = " ".join(sql.split())
    return re.sub(r"SELECT incident\.id, .*? FROM", "SELECT incident.id, ... (all columns) FROM", text, count=1)


async def explain_cases(app_dsn: str, cases: list[Case], first_page_ids: list[uuid.UUID]) -> None:
    for case in cases:
        sql, values = await service_sql(case.params)
        custom = await explain(app_dsn, sql, values)
        generic = await explain(app_dsn, sql, values, generic=True)
        used = sorted(set(INDEX_RE.findall("\n".join(custom))))
        print(f"-- {case.name}: indexes used: {', '.join(used) or 'none (sequential scan)'}")
        print(f"   SQL: {condensed(sql)}")
        print(f"   parameters: {[str(v) for v in values]}")
        for line in custom:
            print(f"   {line}")
        if plan_shape(generic) != plan_shape(custom):
            used_generic = sorted(set(INDEX_RE.findall("\n".join(generic))))
            print(
                "   generic plan (what a prepared statement may switch to after 5 runs) differs; "
                f"indexes: {', '.join(used_generic) or 'none'}"
            )
            for line in generic:
                print(f"   | {line}")
    sql, values = await clocks_sql(first_page_ids)
    lines = await explain(app_dsn, sql, values)
    print(
        f"-- SLA clocks of the first page's 50 incidents (second query of every list request): indexes used:"
        f" {', '.join(sorted(set(INDEX_RE.findall(chr(10).join(lines)))))}"
    )
    for line in lines:
        print("   " + UUID_LIST_RE.sub(lambda m: f"{{...{m.group(0).count(',') + 1} ids...}}", line))


# ---------------------------------------------------------------- HTTP, one client


@dataclass
class Case:
    name: str
    params: dict[str, Any]
    target: float
    bare: bool  # the bare app answers it too (no full text, no other sort)


@dataclass
class Timing:
    latencies: list[float]
    items: int
    size: int
    requests: int


async def time_case(client: Any, url: str, params: dict[str, Any], headers: dict[str, str], requests: int) -> Timing:
    items = size = 0
    started = time.monotonic()
    for _ in range(WARMUP_REQUESTS):
        response = await client.get(url, params=params, headers=headers)
        response.raise_for_status()
        items, size = len(response.json()["items"]), len(response.content)
    per_request = (time.monotonic() - started) / WARMUP_REQUESTS
    count = SLOW_CASE_REQUESTS if per_request > SLOW_CASE_SECONDS else requests
    latencies = []
    for _ in range(count):
        sent = time.perf_counter()
        response = await client.get(url, params=params, headers=headers)
        latencies.append(time.perf_counter() - sent)
        response.raise_for_status()
    return Timing(latencies, items, size, count)


async def deep_cursor(client: Any, url: str, headers: dict[str, str], depth: int) -> str:
    """Walk the keyset cursor from the first page to `depth` rows (200 per page), newest first."""
    cursor, walked = None, 0
    while walked < depth:
        params: dict[str, Any] = {"limit": min(200, depth - walked)}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(url, params=params, headers=headers)
        response.raise_for_status()
        body = response.json()
        walked += len(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            raise RuntimeError(f"the list ended after {walked} rows")
    assert cursor is not None
    return str(cursor)


WHERE = ("gateway", "direct", "bare")


async def benchmark(stack: stack_module.Stack, bare_url: str, args: argparse.Namespace, summary: Summary) -> None:
    import httpx
    from itsm_shared.provision import app_url

    s = stack.settings
    assert s.bootstrap_admin_password
    auth = s.service_url("auth")
    access, password = await agent_token(auth, s.bootstrap_admin_password)
    prefix = services.get("incident").api_prefix
    urls = {
        "gateway": f"{s.gateway_url}{prefix}",
        "direct": f"{s.service_url('incident')}{prefix}",
        "bare": f"{bare_url}/incidents",
    }
    async with httpx.AsyncClient(timeout=60) as client:
        bearer = {"Authorization": f"Bearer {access}"}
        cursors = {
            "service": await deep_cursor(client, urls["direct"], bearer, args.depth),
            "bare": await deep_cursor(client, urls["bare"], {}, args.depth),
        }
        page, text = PAGE_TARGET_P95, TEXT_TARGET_P95
        cases = [
            Case("first page", {}, page, True),
            Case("filtered page: status=in_progress&priority=2", {"status": "in_progress", "priority": 2}, page, True),
            Case(f"page {args.depth:,} rows deep (cursor)", {"cursor": None}, page, True),
            Case("oldest open P4: sort=created_at&status=new&priority=4", OLDEST_OPEN_P4, page, False),
            Case("full text, selective: q=vpn certificate expired", {"q": "vpn certificate expired"}, text, False),
            Case("full text, broad: q=printer", {"q": "printer"}, text, False),
        ]  # fmt: skip
        results: dict[tuple[str, str], Timing] = {}
        for case in cases:
            for where in WHERE:
                if where == "bare" and not case.bare:
                    continue
                params = dict(case.params)
                if "cursor" in params:
                    params["cursor"] = cursors["bare" if where == "bare" else "service"]
                headers: dict[str, str] = {}
                if where != "bare":
                    # A fresh token per case: the slow cases must not outlive a 15-minute access token.
                    async with httpx.AsyncClient(base_url=auth, timeout=30) as login:
                        headers = {"Authorization": f"Bearer {await password_token(login, 'bench-agent', password)}"}
                print(f"measuring {where}: {case.name} ...", flush=True)
                results[(where, case.name)] = await time_case(client, urls[where], params, headers, args.requests)
        response = await client.get(urls["direct"], headers=headers)
        first_page_ids = [uuid.UUID(i["id"]) for i in response.json()["items"]]

    print()
    print("== results: GET /api/v1/incidents, limit 50 (the default), one request at a time ==")
    print("   latency at the client (httpx in this process), warm-up requests excluded; bare: the bare app's")
    print("   GET /incidents on the same table (one SELECT of 50 rows by the (created_at, id) index, no SLA clocks)")
    for case in cases:
        for where in WHERE:
            if (t := results.get((where, case.name))) is None:
                continue
            p95 = percentile(t.latencies, 95)
            print(
                f"  {case.name:<56} {where:<8} p50 {ms(percentile(t.latencies, 50)):>9}  p95 {ms(p95):>9}"
                f"  (n={t.requests}, {t.items} items, {t.size / 1024:.0f} KiB)"
                + ("" if where == "bare" else f"  target p95 <= {ms(case.target)}: {verdict(p95 <= case.target)}")
            )
        gateway = percentile(results[("gateway", case.name)].latencies, 95)
        bare = results.get(("bare", case.name))
        bare95 = percentile(bare.latencies, 95) if bare else math.nan
        r = ratio(gateway, bare95)
        summary.add(
            f"{args.rows:,} incidents, one client, via gateway: {case.name}, p95",
            ms(gateway) + f" (direct {ms(percentile(results[('direct', case.name)].latencies, 95))})",
            ms(bare95) if bare else "—",
            "—" if math.isnan(r) else f"{r:.1f}x the bare",
            f"≤ {ms(case.target)}" + (" (full text)" if case.target != page else ""),
            gateway <= case.target,
        )

    print()
    print("== EXPLAIN (ANALYZE, BUFFERS) of the SQL behind each case, as the service's role ==")
    try:
        await explain_cases(plain_dsn(app_url(s.database_url, "incident")), cases, first_page_ids)
    except Exception as exc:
        print(f"   skipped: the service's query code did not fit ({type(exc).__name__}: {exc})")
    print()
    print(
        f"notes: {CPUS} cores; load average now {load_average()}. Client-side latency includes httpx (~0.3-1 ms);\n"
        "  'direct' is the incident service's own port, 'gateway' adds Traefik. The service also runs its SLA\n"
        "  scheduler (every 0.25 s) and outbox relay during the measurement, as in production."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="incidents to load (default 1,000,000)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per case (default 200)")
    parser.add_argument("--depth", type=int, default=DEPTH, help="rows before the deep page (default 10,000)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the run directory even on success")
    args = parser.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="itsm-bench-list-"))
    summary = Summary("incident_list")
    print("== incident list benchmark ==")
    print(
        f"{args.rows:,} incidents; machine: {machine_line()}.\n"
        f"gateway: API rate limit LIFTED to {RATE_LIMIT} req/s per client (ITSM_API_RATE_LIMIT); incident auto-close\n"
        f"  off (ITSM_INCIDENT_AUTOCLOSE_DAYS=36500). logs: {run_dir}",
        flush=True,
    )
    settings = bench_settings(
        run_dir,
        services=("auth", "incident"),
        api_rate_limit=RATE_LIMIT,
        service_env={"incident": {"ITSM_INCIDENT_AUTOCLOSE_DAYS": "36500"}},
    )
    stack = stack_module.Stack(settings)
    bare: processes.ManagedProcess | None = None
    created = False
    failed = True
    with signals_as_interrupt():
        try:
            print(f"scratch database {settings.database_name}: migrating the incident schema ...", flush=True)
            created = True
            stack.migrate("incident")
            print("loading:", flush=True)
            started = time.monotonic()
            asyncio.run(load(plain_dsn(settings.database_url), args.rows))
            print(f"  loaded in {time.monotonic() - started:.0f} s", flush=True)
            print("starting auth, incident and the gateway on it, and the bare app ...", flush=True)
            stack.start()
            bare, bare_url = start_bare_app(
                run_dir, {"BARE_DATABASE_URL": plain_dsn(settings.database_url), "BARE_TABLE": "incident.incident"}
            )
            asyncio.run(benchmark(stack, bare_url, args, summary))
            summary.notes += [
                "",
                "One client (httpx, one request at a time); the stack is auth + incident + Traefik on the loaded"
                " database (API rate limit lifted); bare: bench/benchlib/bare_app.py reading the same table.",
            ]
            summary.finish()
            failed = False
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
        finally:
            ignore_signals()
            print("cleaning up: stopping processes, dropping the scratch database and exchanges ...", flush=True)
            if bare is not None:
                bare.stop(grace=5)
            stack.stop()
            steps: list[tuple[str, Callable[[], object]]] = [
                ("broker topology", lambda: asyncio.run(remove_stack_topology(settings, INCIDENT_QUEUES))),
            ]
            if hasattr(stack, "drop_broker_users"):  # the harness's broker users of this stack, when it makes some
                steps.append(("broker users", stack.drop_broker_users))
            if created:
                steps.append(("database", stack.drop_database))
            cleanup(steps)
            if failed or args.keep_logs:
                print(f"logs kept in {run_dir}", file=sys.stderr)
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
