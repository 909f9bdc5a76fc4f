from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from itsm_shared.auth import CurrentPrincipal, require_roles
from itsm_shared.db import SessionDep
from itsm_shared.errors import Invalid
from itsm_shared.http import (
    IdempotencyKey,
    IdempotentRequest,
    check_if_match,
    create_once,
    etag,
    with_etag,
)
from itsm_shared.pagination import Page, listed, parse_sort
from itsm_shared.schemas import HistoryRead, Transition
from pydantic import AwareDatetime, TypeAdapter

from change import ical, risk, service
from change.config import get_settings
from change.models import ChangeRequest
from change.schemas import (
    ApprovalCreate,
    ApprovalRead,
    ApprovalResult,
    BlackoutWindowCreate,
    BlackoutWindowRead,
    BlackoutWindowUpdate,
    CalendarRead,
    ChangeCreate,
    ChangeRead,
    ChangeUpdate,
    ConflictsRead,
    NextSlotRead,
    NoteCreate,
    NoteRead,
)

READ = [Depends(require_roles(*service.READERS))]
router = APIRouter(prefix="/api/v1/changes", tags=["changes"], dependencies=READ)
blackouts_router = APIRouter(prefix="/api/v1/blackout-windows", tags=["blackout-windows"], dependencies=READ)
ICAL = "text/calendar"
DURATION = TypeAdapter(timedelta)


async def change_by_ref(ref: str, session: SessionDep) -> ChangeRequest:
    return await service.get_change(session, ref)


ChangeDep = Annotated[ChangeRequest, Depends(change_by_ref)]


@router.post("", status_code=201, response_model=ChangeRead)
async def create_change(
    session: SessionDep, data: ChangeCreate, principal: CurrentPrincipal, key: IdempotencyKey = None
) -> JSONResponse:
    return await create_once(
        session,
        principal.actor,
        key,
        data.model_dump(),
        lambda: service.raise_change(session, data, principal),
        location=router.prefix,
    )


@router.get("", response_model=Page[ChangeRead])
async def list_changes(
    session: SessionDep,
    limit: int = 50,
    cursor: str | None = None,
    sort: str = "-created_at",
    status: Annotated[list[str] | None, Query()] = None,
    type: Annotated[list[str] | None, Query()] = None,
    risk: Annotated[list[str] | None, Query()] = None,
    approval: Annotated[list[str] | None, Query()] = None,
    configuration_item: Annotated[str | None, Query(max_length=200)] = None,
    assignee_id: str | None = None,
    assignment_group: str | None = None,
    requested_by: str | None = None,
    incident_id: str | None = None,
    problem_id: str | None = None,
) -> Page[ChangeRead]:
    items, next_cursor = await service.list_changes(
        session,
        sort=parse_sort(sort, service.SORTS),
        limit=limit,
        cursor=cursor,
        filters={
            "status": listed(status),
            "type": listed(type),
            "risk": listed(risk),
            "approval": listed(approval),
            "configuration_item": configuration_item,
            "assignee_id": assignee_id,
            "assignment_group": assignment_group,
            "requested_by": requested_by,
            "incident_id": incident_id,
            "problem_id": problem_id,
        },
    )
    return Page(items=items, next_cursor=next_cursor)


@router.get("/risk-questionnaire")
async def risk_questionnaire() -> dict[str, object]:
    """The questions of `risk_assessment`, their answers and weights, the score bands and the rules."""
    return risk.questionnaire()


@router.get(
    "/calendar",
    response_model=CalendarRead,
    responses={200: {"content": {ICAL: {"schema": {"type": "string"}}}}},
)
async def calendar(
    request: Request,
    session: SessionDep,
    start: AwareDatetime | None = None,
    end: AwareDatetime | None = None,
    configuration_item: Annotated[str | None, Query(max_length=200)] = None,
    format: Annotated[str | None, Query(pattern="^(json|ics)$")] = None,
) -> Response:
    """Changes with a planned window in `[start, end)` (cancelled ones left out) and the blackout occurrences
    there. JSON by default; iCalendar with `Accept: text/calendar` (or `format=ics`, for calendar clients that
    cannot set headers). Without a range: from 30 days ago to 180 days ahead."""
    settings = get_settings()
    now = datetime.now(UTC)
    start = start or now - timedelta(days=30)
    end = end or start + timedelta(days=210)
    if end <= start:
        raise Invalid("end must be after start", errors=[{"loc": ["query", "end"], "msg": "after start"}])
    longest = settings.change_calendar_max_days
    if end - start > timedelta(days=longest):
        raise Invalid(
            "range too long", errors=[{"loc": ["query", "end"], "msg": f"at most {longest:g} days after start"}]
        )
    found = await service.calendar(
        session,
        start=start,
        end=end,
        configuration_item=configuration_item,
        max_items=settings.change_calendar_max_items,
    )
    wants_ical = format == "ics" or (format is None and ICAL in request.headers.get("accept", ""))
    if wants_ical:
        return Response(
            ical.render(found, now=now),
            media_type=f"{ICAL}; charset=utf-8",
            headers={"Content-Disposition": 'inline; filename="changes.ics"'},
        )
    return JSONResponse(found.model_dump(mode="json"))


@router.get("/{ref}", response_model=ChangeRead)
async def get_change(change: ChangeDep, response: Response) -> ChangeRead:
    with_etag(response, change.version)
    return service.render(change)


@router.patch("/{ref}", response_model=ChangeRead)
async def update_change(
    request: Request, ref: str, session: SessionDep, principal: CurrentPrincipal, data: ChangeUpdate, response: Response
) -> ChangeRead:
    change = await service.get_change(session, ref, for_update=True)
    check_if_match(request, change.version)
    updated = await service.update_change(session, change, data, principal)
    with_etag(response, updated.version)
    return updated


@router.get("/{ref}/transitions", response_model=list[Transition])
async def transitions(change: ChangeDep, principal: CurrentPrincipal) -> list[Transition]:
    return [Transition(**t) for t in service.transitions(change, principal)]


@router.get("/{ref}/history", response_model=list[HistoryRead])
async def history(session: SessionDep, change: ChangeDep) -> list[HistoryRead]:
    return [HistoryRead.model_validate(h, from_attributes=True) for h in await service.history(session, change)]


@router.post("/{ref}/approvals", status_code=201, response_model=ApprovalResult)
async def decide(
    ref: str, session: SessionDep, principal: CurrentPrincipal, data: ApprovalCreate, key: IdempotencyKey = None
) -> JSONResponse:
    idem = IdempotentRequest(session, principal.actor, key, {"ref": ref, **data.model_dump()})
    if replay := await idem.begin():
        return replay
    change = await service.get_change(session, ref, for_update=True)
    approval, after = await service.decide(session, change, data, principal)
    body = ApprovalResult(**ApprovalRead.model_validate(approval, from_attributes=True).model_dump(), change=after)
    return await idem.complete(201, body, headers={"ETag": etag(after.version)})


@router.get("/{ref}/approvals", response_model=list[ApprovalRead])
async def approvals(session: SessionDep, change: ChangeDep) -> list[ApprovalRead]:
    return [ApprovalRead.model_validate(a, from_attributes=True) for a in await service.approvals(session, change)]


@router.post("/{ref}/notes", status_code=201, response_model=NoteRead)
async def add_note(
    ref: str, session: SessionDep, principal: CurrentPrincipal, data: NoteCreate, key: IdempotencyKey = None
) -> JSONResponse:
    idem = IdempotentRequest(session, principal.actor, key, {"ref": ref, **data.model_dump()})
    if replay := await idem.begin():
        return replay
    change = await service.get_change(session, ref)
    note = await service.add_note(session, change, data, principal)
    return await idem.complete(201, NoteRead.model_validate(note, from_attributes=True))


@router.get("/{ref}/notes", response_model=list[NoteRead])
async def list_notes(session: SessionDep, change: ChangeDep) -> list[NoteRead]:
    return [NoteRead.model_validate(n, from_attributes=True) for n in await service.notes(session, change)]


@router.get("/{ref}/conflicts", response_model=ConflictsRead)
async def conflicts(session: SessionDep, change: ChangeDep) -> ConflictsRead:
    """Every conflict of the planned window now: overlapping scheduled changes on a shared configuration item
    and blackout occurrences (non-blocking for emergency changes)."""
    return await service.change_conflicts(session, change)


def _duration(value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return (
            timedelta(seconds=float(value)) if value.replace(".", "", 1).isdigit() else DURATION.validate_python(value)
        )
    except (ValueError, OverflowError) as exc:
        raise Invalid(
            "duration is ISO 8601 (PT2H) or seconds", errors=[{"loc": ["query", "duration"], "msg": "PT2H or 7200"}]
        ) from exc


@router.get("/{ref}/next-slot", response_model=NextSlotRead)
async def next_slot(
    session: SessionDep,
    change: ChangeDep,
    duration: Annotated[str | None, Query(description="ISO 8601 (PT2H) or seconds", max_length=50)] = None,
    after: AwareDatetime | None = None,
) -> NextSlotRead:
    """The first window of `duration` (default: the planned window's length) starting at or after `after`
    (default: the next minute) that is free of conflicts and blackouts, within the search horizon."""
    return await service.next_slot(
        session,
        change,
        duration=_duration(duration),
        after=after,
        horizon_days=get_settings().change_next_slot_horizon_days,
    )


# ---------------------------------------------------------------- blackout windows


@blackouts_router.post("", status_code=201, response_model=BlackoutWindowRead)
async def create_blackout(
    session: SessionDep, data: BlackoutWindowCreate, principal: CurrentPrincipal, key: IdempotencyKey = None
) -> JSONResponse:
    idem = IdempotentRequest(session, principal.actor, key, data.model_dump())
    if replay := await idem.begin():
        return replay
    created = await service.create_blackout(session, data, principal)
    return await idem.complete(
        201,
        created,
        headers={"ETag": etag(created.version), "Location": f"{blackouts_router.prefix}/{created.id}"},
    )


@blackouts_router.get("", response_model=Page[BlackoutWindowRead])
async def list_blackouts(
    session: SessionDep, limit: int = 50, cursor: str | None = None, sort: str = "-created_at"
) -> Page[BlackoutWindowRead]:
    items, next_cursor = await service.list_blackouts(
        session, sort=parse_sort(sort, service.BLACKOUT_SORTS), limit=limit, cursor=cursor
    )
    return Page(items=items, next_cursor=next_cursor)


@blackouts_router.get("/{window_id}", response_model=BlackoutWindowRead)
async def get_blackout(window_id: uuid.UUID, session: SessionDep, response: Response) -> BlackoutWindowRead:
    window = await service.get_blackout(session, window_id)
    with_etag(response, window.version)
    return service.render_blackout(window)


@blackouts_router.patch("/{window_id}", response_model=BlackoutWindowRead)
async def update_blackout(
    request: Request,
    window_id: uuid.UUID,
    session: SessionDep,
    principal: CurrentPrincipal,
    data: BlackoutWindowUpdate,
    response: Response,
) -> BlackoutWindowRead:
    window = await service.get_blackout(session, window_id, for_update=True)
    check_if_match(request, window.version)
    updated = await service.update_blackout(session, window, data, principal)
    with_etag(response, updated.version)
    return updated


@blackouts_router.delete("/{window_id}", status_code=204)
async def delete_blackout(
    request: Request, window_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal
) -> Response:
    window = await service.get_blackout(session, window_id, for_update=True)
    check_if_match(request, window.version)
    await service.delete_blackout(session, window, principal)
    return Response(status_code=204)
