"""CONTRACT §7 behind /api/v1/audit: auditors and admins read, verify, export and get the anchor keys; admins
replay."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from itsm_shared.app import Runtime
from itsm_shared.auth import Principal, Role, require_roles
from itsm_shared.db import SessionDep
from itsm_shared.openapi import documented
from itsm_shared.pagination import Cursor, Limit, Page
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from audit import queries
from audit.config import get_settings
from audit.replay import replay_events
from audit.schemas import (
    AnchorKeyRead,
    AuditRecord,
    EventFilter,
    ReplayRequest,
    ReplayResult,
    SortOrder,
    TimeRange,
    VerifyResult,
)
from audit.verify import verify_chain

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


TYPE_RULE = "an event type (itsm.incident.created or incident.created) or a prefix ending in .* (incident.*)"


@router.get(
    "/events",
    response_model=Page[AuditRecord],
    summary="The log, newest first",
    responses=documented(rules={"query.until": "after since", "query.type": TYPE_RULE}),
)
async def list_events(
    session: SessionDep,
    _: Reader,
    limit: Limit = 50,
    cursor: Cursor = None,
    sort: SortOrder = "-seq",
    *,
    filters: Annotated[EventFilter, Query()],
) -> Page[dict[str, Any]]:
    """Filters combine with AND. `type` is an event type (`itsm.incident.created` or `incident.created`) or a
    prefix (`incident.*`); `since` (inclusive) and `until` (exclusive) bound `received_at`."""
    return await queries.list_events(session, filters=filters, sort=sort, limit=limit, cursor=cursor)


@router.get("/events/{event_id}", response_model=AuditRecord, summary="One record, by event id")
async def get_event(session: SessionDep, _: Reader, event_id: uuid.UUID) -> dict[str, Any]:
    return await queries.get_event(session, event_id)


@router.get(
    "/export",
    summary="NDJSON export of a time range, streamed",
    response_class=StreamingResponse,
    responses={
        200: {"content": {NDJSON: {}}, "description": "one record per line, in seq order"},
        **documented(rules={"query.until": "after since"}),
    },
)
async def export(sessions: Sessions, _: Reader, period: Annotated[TimeRange, Query()]) -> StreamingResponse:
    """Records received in [since, until), oldest first, one JSON object per line:
    `{seq, event_id, received_at, prev_hash, hash, event}`, exactly what the hash covers (README, Audit), so
    the export verifies on its own. Streamed in chunks: the range is never held in memory."""
    chunks = queries.export(sessions, since=period.since, until=period.until, chunk=get_settings().audit_export_chunk)
    return StreamingResponse(
        chunks, media_type=NDJSON, headers={"Content-Disposition": 'attachment; filename="audit.ndjson"'}
    )


@router.get("/verify", response_model=VerifyResult, summary="Walk the hash chain")
async def verify(sessions: Sessions, _: Reader, full: bool = False) -> VerifyResult:
    """From the last checkpoint (a prefix an earlier walk found intact) to the newest record, or with
    `full=true` from the first record: every hash, every link, no seq missing, and every anchor's signature
    (a key the database does not hold) with the anchors covering the chain end to end, so a rewrite with every
    hash recomputed is found too. An intact walk appends a checkpoint at its end."""
    return await verify_chain(sessions, full=full, chunk=get_settings().audit_verify_chunk)


@router.get("/anchor-keys", response_model=list[AnchorKeyRead], summary="The public keys of the anchors")
async def anchor_keys(_: Reader) -> list[AnchorKeyRead]:
    """The Ed25519 public keys that verify the anchors of the chain (the export carries them): the key signing
    now first, then former keys still accepted. Pin them outside the system to check an export on your own."""
    return queries.anchor_key_list()


@router.post(
    "/replay",
    response_model=ReplayResult,
    summary="Republish stored events to a consumer queue",
    responses=documented(
        rules={
            "body.queue": "one of the services' consumer queues (ITSM_AUDIT_REPLAY_QUEUES), declared on the broker",
            "body.until": "after since",
            "body.type": TYPE_RULE,
        }
    ),
)
async def replay(
    body: ReplayRequest, sessions: Sessions, _: Admin, runtime: Annotated[Runtime, Depends(_runtime)]
) -> ReplayResult:
    """Publishes the events received in [since, until) (of `type`, exact or a prefix like `incident.*`) to
    `queue`, one of the services' consumer queues (deploy/services.toml), through the default exchange, in log
    order, persistent, each with its event id as message id: a rebuilt read model catches up, idempotent
    consumers skip what they have. 422 if the queue is not a consumer queue or does not exist."""
    settings = get_settings()
    return await replay_events(
        sessions,
        runtime.broker,
        amqp_url=runtime.settings.amqp_url,
        request=body,
        chunk=settings.audit_replay_chunk,
        allowed=settings.replay_queues,
        queue_prefix=runtime.settings.queue_prefix,
    )
