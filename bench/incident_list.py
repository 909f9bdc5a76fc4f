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

Measured over HTTP with an agent's token, by wrk on one connection (one request at a time, 4 s per case and place,
after a warm-up; a Python client on the same cores would add its own milliseconds), through the gateway and
directly on the incident service's port: the first page; a filtered page (status=in_progress&priority=2); the
page 10,000 rows deep (walking the keyset cursor there, then fetching that same page repeatedly); the oldest
open low-priority incidents (sort=created_at, status=new, priority=4), whose business-hours SLA clocks have run
for up to two years; full-text queries, a selective and a broad one. The baseline, for the first three: the
bare app (bench/benchlib/bare_app.py, `GET /incidents`) reading the same table, one SELECT of 50 rows by the
(created_at, id) index (its own keyset cursor for the deep page), no token, no SLA clocks. p50/p95 per case
against the targets of issue 10 (any page p95 <= 15 ms; full text p95 <= 50 ms), then EXPLAIN (ANALYZE,
BUFFERS) of the SQL behind each case: the statement and its arguments as the service's own code gives them to
the driver (incident.queries.page_statement), explained as the service's role with the same parameters; when the
service's code no longer fits that call, EXPLAIN is skipped and says why. Ends with
the summary table (also kept in build/bench/ for `make bench`). Everything started is stopped and the scratch
database dropped, also on failure or Ctrl-C. The data: benchlib/incident_data.py; EXPLAIN: benchlib/list_explain.py.

    uv run python bench/incident_list.py [--rows 1000000] [--seconds 4] [--depth 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import math
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
    cleanup,
    ignore_signals,
    processes,
    services,
    signals_as_interrupt,
    stack_module,
    start_bare_app,
)
from benchlib.figures import ms, ratio, verdict
from benchlib.incident_data import load
from benchlib.list_explain import explain_cases
from benchlib.machine import CPUS, load_average, machine_line
from benchlib.scratch import INCIDENT_QUEUES, bench_settings, plain_dsn, remove_stack_topology
from benchlib.table import Summary
from benchlib.tokens import agent_token, password_token
from benchlib.wrk import run_wrk

RATE_LIMIT = 1_000_000
PAGE_TARGET_P95 = 0.015
TEXT_TARGET_P95 = 0.050
DEPTH = 10_000
WARMUP_REQUESTS = 10
OLDEST_OPEN_P4 = {"sort": "created_at", "status": "new", "priority": 4}


# ---------------------------------------------------------------- HTTP, one client


@dataclass
class Case:
    name: str
    params: dict[str, Any]
    target: float
    bare: bool  # the bare app answers it too (no full text, no other sort)


@dataclass
class Timing:
    p50: float
    p95: float
    items: int
    size: int
    requests: int


async def time_case(
    client: Any, url: str, params: dict[str, Any], headers: dict[str, str], seconds: float, work_dir: Path, name: str
) -> Timing:
    """Warm up with httpx (and see the page's items and size), then time the case with wrk on one connection for
    `seconds`: one request at a time from a C client that costs little (httpx, a Python client on the same
    cores, added about 3.5 ms per request of its own)."""
    import httpx

    items = size = 0
    for _ in range(WARMUP_REQUESTS):
        response = await client.get(url, params=params, headers=headers)
        response.raise_for_status()
        items, size = len(response.json()["items"]), len(response.content)
    result = await run_wrk(
        str(httpx.URL(url, params=params)),
        authorization=headers.get("Authorization"),
        threads=1,
        connections=1,
        duration=seconds,
        work_dir=work_dir,
        name=name,
    )
    if result.errors:
        raise RuntimeError(f"{name}: {result.error_text()}")
    return Timing(result.latency("p50"), result.latency("p95"), items, size, result.requests)


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


async def benchmark(
    stack: stack_module.Stack, bare_url: str, args: argparse.Namespace, summary: Summary, work_dir: Path
) -> None:
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
                results[(where, case.name)] = await time_case(
                    client, urls[where], params, headers, args.seconds, work_dir, f"{where} {case.name}"
                )
        response = await client.get(urls["direct"], headers=headers)
        first_page_ids = [uuid.UUID(i["id"]) for i in response.json()["items"]]

    print()
    print("== results: GET /api/v1/incidents, limit 50 (the default), one request at a time ==")
    print("   latency at the client (wrk, one connection: one request at a time), after 10 warm-up requests; bare:")
    print("   the bare app's GET /incidents on the same table (one SELECT of 50 rows by the (created_at, id) index,")
    print("   no SLA clocks)")
    for case in cases:
        for where in WHERE:
            if (t := results.get((where, case.name))) is None:
                continue
            p95 = t.p95
            print(
                f"  {case.name:<56} {where:<8} p50 {ms(t.p50):>9}  p95 {ms(p95):>9}"
                f"  (n={t.requests}, {t.items} items, {t.size / 1024:.0f} KiB)"
                + ("" if where == "bare" else f"  target p95 <= {ms(case.target)}: {verdict(p95 <= case.target)}")
            )
        gateway = results[("gateway", case.name)].p95
        bare = results.get(("bare", case.name))
        bare95 = bare.p95 if bare else math.nan
        r = ratio(gateway, bare95)
        summary.add(
            f"{args.rows:,} incidents, one client, via gateway: {case.name}, p95",
            ms(gateway) + f" (direct {ms(results[('direct', case.name)].p95)})",
            ms(bare95) if bare else "—",
            "—" if math.isnan(r) else f"{r:.1f}x the bare",
            f"≤ {ms(case.target)}" + (" (full text)" if case.target != page else ""),
            gateway <= case.target,
        )

    print()
    print("== EXPLAIN (ANALYZE, BUFFERS) of the SQL behind each case, as the service's role ==")
    try:
        await explain_cases(
            plain_dsn(app_url(s.database_url, "incident")), [(c.name, c.params) for c in cases], first_page_ids
        )
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
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of wrk per case and place (default 4)")
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
            asyncio.run(benchmark(stack, bare_url, args, summary, run_dir))
            summary.notes += [
                "",
                "One client (wrk, one connection); the stack is auth + incident + Traefik on the loaded"
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
