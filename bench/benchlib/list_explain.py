"""EXPLAIN (ANALYZE, BUFFERS) of the SQL behind the cases of bench/incident_list.py: the page's statement and its
arguments as the incident service's own code gives them to the driver (incident.queries.page_statement), and its
page's clocks (PAGE_CLOCKS_SQL), explained as the service's role with the same parameters; with the generic plan
too when it differs (what a prepared statement may switch to). When the service's code no longer fits these
calls, the caller says so and skips it."""

from __future__ import annotations

import re
import uuid
from typing import Any


def router_filters(params: dict[str, Any]) -> dict[str, Any]:
    """The filter dict incident.router.list_incidents builds from the query string."""
    raw = params.get("status")
    statuses = [s for s in raw.split(",") if s] if raw else None
    names = ("priority", "assignee_id", "assignment_group", "category", "caller_id", "problem_id")
    filters: dict[str, Any] = {"status": statuses, **{n: params.get(n) for n in names}}
    return filters | {"created_after": None, "created_before": None, "sla_breached": None, "q": params.get("q")}


async def service_sql(params: dict[str, Any]) -> tuple[str, list[Any]]:
    """The list query and its parameters, as the service builds them for these query parameters."""
    from incident import queries
    from itsm_shared.auth import Principal, Role
    from itsm_shared.pagination import parse_sort

    principal = Principal(id=uuid.uuid4(), roles=frozenset({Role.AGENT}))
    sql, arguments = queries.page_statement(
        principal,
        sort=parse_sort(params.get("sort", "-created_at"), queries.SORTS),
        limit=int(params.get("limit", 50)),
        cursor=params.get("cursor"),
        filters=router_filters(params),
    )
    return sql, arguments


async def clocks_sql(ids: list[uuid.UUID]) -> tuple[str, list[Any]]:
    from incident import queries

    return queries.PAGE_CLOCKS_SQL, [ids]


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


async def explain_cases(app_dsn: str, cases: list[tuple[str, dict[str, Any]]], first_page_ids: list[uuid.UUID]) -> None:
    """Print the plans of each case (name, query parameters), then of the SLA clocks of the first page."""
    for name, params in cases:
        sql, values = await service_sql(params)
        custom = await explain(app_dsn, sql, values)
        generic = await explain(app_dsn, sql, values, generic=True)
        used = sorted(set(INDEX_RE.findall("\n".join(custom))))
        print(f"-- {name}: indexes used: {', '.join(used) or 'none (sequential scan)'}")
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
