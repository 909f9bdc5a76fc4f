"""The baseline of bench/incident_create.py: a bare FastAPI + asyncpg endpoint that inserts an incident-like row.

`POST /incidents` validates the same body as the incident service (a pydantic model), computes the priority
from impact and urgency, inserts one row into `bare_incident` (the incident table's columns, its generated
full-text column and its indexes) with a single autocommitted INSERT ... RETURNING, and answers 201 with
the row. No token check, no SLA clocks, no history, no outbox event, no gateway: what is left is the floor
cost of "HTTP request to committed row" in this Python stack. `POST /noop` answers 201 without touching the
database (the ceiling of the load generator + uvicorn on this machine).

`GET /incidents?limit=50` is the baseline of the list: one SELECT of `limit` rows (the incident columns above,
default 50, at most 200) newest first, `ORDER BY created_at DESC, id DESC`, which walks the (created_at, id)
index backwards; `status=` and `priority=` filter (the (status|priority, created_at, id) indexes), `cursor=`
continues after the last row of the previous page (keyset, as the service's cursor). It answers
`{"items": [...], "next_cursor": ...}`. No token, no visibility rule, no SLA clocks.

Environment: BARE_DATABASE_URL (plain postgresql:// URL), BARE_POOL_SIZE (default 20, the incident service's
pool_size 10 + max_overflow 10), BARE_TABLE (the table the list reads, default `bare_incident`;
bench/incident_list.py points it at the incident service's own `incident.incident` with 1,000,000 rows).
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

PRIORITY = {(1, 1): 1, (1, 2): 2, (2, 1): 2, (1, 3): 3, (2, 2): 3, (3, 1): 3, (2, 3): 4, (3, 2): 4, (3, 3): 5}

DDL = """
CREATE SEQUENCE IF NOT EXISTS bare_number_seq;
CREATE TABLE IF NOT EXISTS bare_incident (
    id uuid PRIMARY KEY,
    number varchar(16) NOT NULL DEFAULT 'INC' || lpad(nextval('bare_number_seq')::text, 7, '0'),
    title varchar(200) NOT NULL,
    description text,
    caller_id uuid NOT NULL,
    category varchar(100),
    configuration_item varchar(200),
    impact smallint NOT NULL,
    urgency smallint NOT NULL,
    priority smallint NOT NULL,
    status varchar(20) NOT NULL DEFAULT 'new',
    assignment_group varchar(100),
    assignee_id uuid,
    created_by uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    version integer NOT NULL DEFAULT 1,
    search tsvector GENERATED ALWAYS AS
        (to_tsvector('english', coalesce(title, '') || ' ' || coalesce(description, ''))) STORED
);
CREATE UNIQUE INDEX IF NOT EXISTS ix_bare_number ON bare_incident (number);
CREATE INDEX IF NOT EXISTS ix_bare_created ON bare_incident (created_at, id);
CREATE INDEX IF NOT EXISTS ix_bare_status_created ON bare_incident (status, created_at, id);
CREATE INDEX IF NOT EXISTS ix_bare_priority_created ON bare_incident (priority, created_at, id);
CREATE INDEX IF NOT EXISTS ix_bare_caller_created ON bare_incident (caller_id, created_at, id);
CREATE INDEX IF NOT EXISTS ix_bare_assignee_created ON bare_incident (assignee_id, created_at, id);
CREATE INDEX IF NOT EXISTS ix_bare_group_created ON bare_incident (assignment_group, created_at, id);
CREATE INDEX IF NOT EXISTS ix_bare_search ON bare_incident USING gin (search);
"""

INSERT = """
INSERT INTO bare_incident (id, title, description, caller_id, category, configuration_item, impact, urgency,
                           priority, assignment_group, assignee_id, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING id, number, title, description, caller_id, category, configuration_item, impact, urgency, priority,
          status, assignment_group, assignee_id, created_by, created_at, updated_at, version
"""

# The caller of every bare incident: there is no token to take it from.
CALLER = uuid.UUID("00000000-0000-4000-8000-0000000000b1")


class IncidentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=100_000)
    caller_id: uuid.UUID | None = None
    category: str | None = Field(default=None, max_length=100)
    configuration_item: str | None = Field(default=None, max_length=200)
    impact: int = Field(default=3, ge=1, le=3)
    urgency: int = Field(default=3, ge=1, le=3)
    assignment_group: str | None = Field(default=None, max_length=100)
    assignee_id: uuid.UUID | None = None


async def create_schema(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(DDL)
    finally:
        await connection.close()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    size = int(os.environ.get("BARE_POOL_SIZE", "20"))
    app.state.pool = await asyncpg.create_pool(os.environ["BARE_DATABASE_URL"], min_size=size, max_size=size)
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


def _json(record: asyncpg.Record) -> dict[str, Any]:
    return {
        k: (str(v) if isinstance(v, uuid.UUID) else v.isoformat() if hasattr(v, "isoformat") else v)
        for k, v in record.items()
    }


@app.post("/incidents", status_code=201)
async def create(data: IncidentCreate, request: Request) -> JSONResponse:
    caller = data.caller_id or CALLER
    pool: asyncpg.Pool = request.app.state.pool
    row = await pool.fetchrow(
        INSERT,
        uuid.uuid4(),
        data.title,
        data.description,
        caller,
        data.category,
        data.configuration_item,
        data.impact,
        data.urgency,
        PRIORITY[(data.impact, data.urgency)],
        data.assignment_group,
        data.assignee_id,
        CALLER,
    )
    return JSONResponse(_json(row), status_code=201, headers={"Location": f"/incidents/{row['id']}"})


LIST_COLUMNS = (
    "id, number, title, description, caller_id, category, configuration_item, impact, urgency, priority, status,"
    " assignment_group, assignee_id, created_by, created_at, updated_at, version"
)


def _cursor(record: asyncpg.Record) -> str:
    raw = f"{record['created_at'].isoformat()}|{record['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str) -> tuple[datetime, uuid.UUID]:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    created, _, ident = raw.partition("|")
    return datetime.fromisoformat(created), uuid.UUID(ident)


@app.get("/incidents")
async def list_incidents(
    request: Request,
    limit: int = Query(default=50, ge=1, le=200),
    status: str | None = None,
    priority: int | None = Query(default=None, ge=1, le=5),
    cursor: str | None = None,
) -> JSONResponse:
    table = os.environ.get("BARE_TABLE", "bare_incident")
    where: list[str] = []
    args: list[Any] = []
    if status is not None:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if priority is not None:
        args.append(priority)
        where.append(f"priority = ${len(args)}")
    if cursor is not None:
        created, ident = _after(cursor)
        args += [created, ident]
        where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    sql = (
        f"SELECT {LIST_COLUMNS} FROM {table}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
    )
    pool: asyncpg.Pool = request.app.state.pool
    rows = await pool.fetch(sql, *args)
    next_cursor = _cursor(rows[-1]) if len(rows) == limit else None
    return JSONResponse({"items": [_json(r) for r in rows], "next_cursor": next_cursor})


@app.post("/noop", status_code=201)
async def noop(data: IncidentCreate) -> JSONResponse:
    return JSONResponse({"id": str(uuid.uuid4()), "title": data.title}, status_code=201)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
