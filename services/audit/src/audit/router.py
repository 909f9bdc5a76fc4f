"""CONTRACT §7 behind /api/v1/audit: auditors and admins read, verify and export; admins replay."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from itsm_shared.app import Runtime
from itsm_shared.auth import Principal, Role, require_roles
from itsm_shared.db import SessionDep
from itsm_shared.errors import Invalid, NotFound
from itsm_shared.pagination import Page, parse_sort
from pydantic import AwareDatetime
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from audit import service
from audit.config import get_settings
from audit.schemas import AuditRecord, ReplayRequest, ReplayResult, VerifyResult

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])
Reader = Annotated[Principal, Depends(require_roles(Role.AUDITOR, Role.ADMIN))]
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
NDJSON = "application/x-ndjson"


def _sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    factory: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return factory


Sessions = Annotated[async_sessionmaker[AsyncSession], Depends(_sessions)]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _check_range(since: datetime | None, until: datetime | None, where: str = "query") -> None:
    if since is not None and until is not None and since >= until:
        raise Invalid("since must be before until", errors=[{"loc": [where, "until"], "msg": "must be after since"}])


@router.get("/events", response_model=Page[AuditRecord], summary="The log, newest first")
async def list_events(
    session: SessionDep,
    _: Reader,
    limit: int = 50,
    cursor: str | None = None,
    sort: str = "-seq",
    type: str | None = None,
    subject: str | None = None,
    actor: str | None = None,
    correlation_id: str | None = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
) -> Page[Any]:
    """Filters combine with AND. `type` is an event type (`itsm.incident.created` or `incident.created`) or a
    prefix (`incident.*`); `since` (inclusive) and `until` (exclusive) bound `received_at`."""
    _check_range(since, until)
    filters = service.EventFilter(type, subject, actor, correlation_id, since, until)
    rows, next_cursor = await service.list_events(
        session, filters=filters, sort=parse_sort(sort, service.SORTS), limit=limit, cursor=cursor
    )
    return Page(items=[service.record_view(r) for r in rows], next_cursor=next_cursor)


@router.get("/events/{event_id}", response_model=AuditRecord, summary="One record, by event id")
async def get_event(session: SessionDep, _: Reader, event_id: uuid.UUID) -> dict[str, Any]:
    row = await service.get_event(session, event_id)
    if row is None:
        raise NotFound("no such event in the audit log")
    return service.record_view(row)


@router.get(
    "/export",
    summary="NDJSON export of a time range, streamed",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {}}, "description": "one record per line, in seq order"}},
)
async def export(
    sessions: Sessions, _: Reader, since: AwareDatetime | None = None, until: AwareDatetime | None = None
) -> StreamingResponse:
    """Records received in [since, until), oldest first, one JSON object per line:
    `{seq, event_id, received_at, prev_hash, hash, event}`, exactly what the hash covers (README, Audit), so
    the export verifies on its own. Streamed in chunks: the range is never held in memory."""
    _check_range(since, until)
    chunks = service.export(sessions, since=since, until=until, chunk=get_settings().audit_export_chunk)
    return StreamingResponse(
        chunks, media_type=NDJSON, headers={"Content-Disposition": 'attachment; filename="audit.ndjson"'}
    )


@router.get("/verify", response_model=VerifyResult, summary="Walk the hash chain")
async def verify(sessions: Sessions, _: Reader, full: bool = False) -> VerifyResult:
    """From the last checkpoint (a prefix an earlier walk found intact) to the newest record, or with
    `full=true` from the first record. An intact walk appends a checkpoint at its end."""
    result = await service.verify(sessions, full=full, chunk=get_settings().audit_verify_chunk)
    return VerifyResult.model_validate(result, from_attributes=True)


@router.post("/replay", response_model=ReplayResult, summary="Republish stored events to a queue")
async def replay(
    body: ReplayRequest, sessions: Sessions, _: Admin, runtime: Annotated[Runtime, Depends(_runtime)]
) -> ReplayResult:
    """Publishes the events received in [since, until) (of `type`, exact or a prefix like `incident.*`) to
    the existing queue `queue` through the default exchange, in log order, persistent, each with its event id
    as message id: a new subscriber or a rebuilt read model catches up, idempotent consumers skip what they
    have. 422 if the queue does not exist."""
    _check_range(body.since, body.until, "body")
    if body.type is not None:
        service.parse_type_pattern(body.type)  # 422 on a malformed pattern, before anything is published
    await service.ensure_queue_exists(runtime.settings.amqp_url, body.queue)
    published, first, last = await service.replay(
        sessions,
        runtime.broker,
        queue=body.queue,
        since=body.since,
        until=body.until,
        type_pattern=body.type,
        chunk=get_settings().audit_replay_chunk,
    )
    return ReplayResult(queue=body.queue, published=published, first_seq=first, last_seq=last)
