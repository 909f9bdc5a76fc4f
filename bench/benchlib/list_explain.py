"""EXPLAIN (ANALYZE, BUFFERS) of the SQL behind the cases of bench/incident_list.py: the statement is built by the
incident service's own code (its list_incidents with a session that records instead of executing), compiled for
asyncpg and explained as the service's role with the same parameters; with the generic plan too when it differs
(what a prepared statement may switch to). When the service's code no longer fits that call, the caller says so
and skips it."""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import Any


class _NoRows:
    def all(self) -> list[Any]:
        return []


class RecordingSession:
    """Stands in for the AsyncSession: records the statements the service code would run."""

    def __init__(self) -> None:
        self.statements: list[Any] = []

    async def exec(self, statement: Any, parameters: dict[str, Any] | None = None) -> _NoRows:
        self.statements.append(statement.params(parameters) if parameters else statement)
        return _NoRows()

    execute = exec  # the list reads rows (session.execute), other queries ORM objects (session.exec)

    async def connection(self) -> RecordingSession:
        return self  # the list reads on the session's Core connection


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
    from incident import queries

    if (page_clocks := getattr(queries, "PAGE_CLOCKS", None)) is not None:  # the list's own statement
        return _compiled(page_clocks.params(ids=ids))
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
