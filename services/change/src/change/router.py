from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from itsm_shared.auth import CurrentPrincipal, require_roles
from itsm_shared.db import SessionDep
from itsm_shared.http import IdempotencyKey, check_if_match, create_once, with_etag
from itsm_shared.openapi import documented
from itsm_shared.pagination import CommaSeparated, Cursor, Limit, Page, parse_sort, sort_by
from itsm_shared.schemas import HistoryRead, Transition
from pydantic import BeforeValidator

from change import approvals, blackouts, calendar, ical, risk, service, templates
from change.models import Approval, BlackoutWindow, ChangeRequest, ChangeType, Risk, StandardChangeTemplate, Status
from change.schemas import (
    ApprovalCreate,
    ApprovalRead,
    ApprovalResult,
    AwareTime,
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
    TemplateCreate,
    TemplateRead,
    TemplateUpdate,
)

READ = [Depends(require_roles(*service.READERS))]
router = APIRouter(prefix="/api/v1/changes", tags=["changes"], dependencies=READ)
blackouts_router = APIRouter(prefix="/api/v1/blackout-windows", tags=["blackout-windows"], dependencies=READ)
# Included before `router`, whose GET /{ref} would otherwise take /standard-templates for an RFC's number.
templates_router = APIRouter(
    prefix="/api/v1/changes/standard-templates", tags=["standard-change-templates"], dependencies=READ
)
ICAL = "text/calendar"


async def change_by_ref(ref: str, session: SessionDep, principal: CurrentPrincipal) -> ChangeRequest:
    return await service.visible(session, ref, principal)


async def locked_change(ref: str, session: SessionDep, principal: CurrentPrincipal) -> ChangeRequest:
    return await service.visible(session, ref, principal, for_update=True)


async def blackout_by_id(window_id: uuid.UUID, session: SessionDep) -> BlackoutWindow:
    return await blackouts.get_blackout(session, window_id)


async def locked_blackout(window_id: uuid.UUID, session: SessionDep) -> BlackoutWindow:
    return await blackouts.get_blackout(session, window_id, for_update=True)


async def template_by_id(template_id: uuid.UUID, session: SessionDep) -> StandardChangeTemplate:
    return await templates.get_template(session, template_id)


async def locked_template(template_id: uuid.UUID, session: SessionDep) -> StandardChangeTemplate:
    return await templates.get_template(session, template_id, for_update=True)


def _seconds(value: Any) -> Any:
    """A plain number of seconds (7200, 7200.5) as a number; anything else is ISO 8601 (PT2H) for pydantic."""
    if isinstance(value, str) and value.replace(".", "", 1).isdigit():
        return float(value)
    return value


ChangeDep = Annotated[ChangeRequest, Depends(change_by_ref)]
LockedChange = Annotated[ChangeRequest, Depends(locked_change)]
BlackoutDep = Annotated[BlackoutWindow, Depends(blackout_by_id)]
LockedBlackout = Annotated[BlackoutWindow, Depends(locked_blackout)]
TemplateDep = Annotated[StandardChangeTemplate, Depends(template_by_id)]
LockedTemplate = Annotated[StandardChangeTemplate, Depends(locked_template)]
Duration = Annotated[timedelta | None, Query(description="ISO 8601 (PT2H) or seconds"), BeforeValidator(_seconds)]
ConfigurationItem = Annotated[str | None, Query(max_length=200)]


# What a change's and a blackout window's body is checked for beyond its schema (their 422 names the field).
YEARS = "in the years 2 to 9997"
WINDOW_RULES = {
    "body.planned_start": YEARS,
    "body.planned_end": f"after planned_start, at most ITSM_CHANGE_MAX_WINDOW_DAYS (default 31) days later, {YEARS}",
    "body.actual_start": YEARS,
    "body.actual_end": f"after actual_start, {YEARS}",
}
CHANGE_RULES = {
    **WINDOW_RULES,
    "body.standard_template_id": "an active standard-change template, with type standard",
    "body.risk_assessment": "a standard change is low risk",
}
CREATE_CHANGE = documented(etag=201, location=201, rules=CHANGE_RULES)
UPDATE_CHANGE = documented(
    etag=200,
    if_match=True,
    conflict="the change cannot move to that status, or its window conflicts with others or a blackout",
    rules={
        **CHANGE_RULES,
        "body.risk_override_reason": "goes with a risk_override",
        "body.close_code": "with a move to closed or cancelled",
        "body.close_notes": "with a move to closed or cancelled",
    },
)
BLACKOUT_RULES = {
    "body.end": f"after start, {YEARS}",
    "body.start": YEARS,
    "body.timezone": "a known IANA time zone",
    "body.rrule": "an RFC 5545 recurrence rule the calendar can expand",
}
CREATE_BLACKOUT = documented(etag=201, location=201, rules=BLACKOUT_RULES)
UPDATE_BLACKOUT = documented(etag=200, if_match=True, rules=BLACKOUT_RULES)


@router.post("", status_code=201, response_model=ChangeRead, responses=CREATE_CHANGE)
async def create_change(
    session: SessionDep, data: ChangeCreate, principal: CurrentPrincipal, key: IdempotencyKey = None
) -> Response:
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
    limit: Limit = 50,
    cursor: Cursor = None,
    sort: Annotated[str, sort_by(service.SORTS)] = "-created_at",
    status: Annotated[list[Status] | None, Query(), CommaSeparated] = None,
    type: Annotated[list[ChangeType] | None, Query(), CommaSeparated] = None,
    risk: Annotated[list[Risk] | None, Query(), CommaSeparated] = None,
    approval: Annotated[list[Approval] | None, Query(), CommaSeparated] = None,
    configuration_item: ConfigurationItem = None,
    assignee_id: uuid.UUID | None = None,
    assignment_group: Annotated[str | None, Query(max_length=100)] = None,
    requested_by: uuid.UUID | None = None,
    incident_id: uuid.UUID | None = None,
    problem_id: uuid.UUID | None = None,
) -> Page[ChangeRead]:
    filters = {
        "status": status,
        "type": type,
        "risk": risk,
        "approval": approval,
        "configuration_item": configuration_item,
        "assignee_id": assignee_id,
        "assignment_group": assignment_group,
        "requested_by": requested_by,
        "incident_id": incident_id,
        "problem_id": problem_id,
    }
    items, next_cursor = await service.list_changes(
        session, sort=parse_sort(sort, service.SORTS), limit=limit, cursor=cursor, filters=filters
    )
    return Page(items=items, next_cursor=next_cursor)


@router.get("/risk-questionnaire")
async def risk_questionnaire() -> dict[str, object]:
    """The questions of `risk_assessment`, their answers and weights, the score bands and the rules."""
    return risk.questionnaire()


@router.get(
    "/calendar",
    response_model=CalendarRead,
    responses={
        200: {"content": {ICAL: {"schema": {"type": "string"}}}},
        **documented(
            rules={
                "query.start": YEARS,
                "query.end": f"after start, at most ITSM_CHANGE_CALENDAR_MAX_DAYS after it, not so many changes or"
                f" blackout occurrences that the answer would be too long, {YEARS}",
            }
        ),
    },
)
async def change_calendar(
    request: Request,
    session: SessionDep,
    start: AwareTime | None = None,
    end: AwareTime | None = None,
    configuration_item: ConfigurationItem = None,
    format: Annotated[str | None, Query(pattern="^(json|ics)$")] = None,
) -> Response:
    """Changes with a planned window in `[start, end)` (cancelled ones left out) and the blackout occurrences
    there. JSON by default; iCalendar with `Accept: text/calendar` (or `format=ics`, for calendar clients that
    cannot set headers). Without a range: from 30 days ago to 180 days ahead."""
    found = await calendar.read_calendar(session, start=start, end=end, configuration_item=configuration_item)
    if format == "ics" or (format is None and ICAL in request.headers.get("accept", "")):
        return Response(
            ical.render(found, now=datetime.now(UTC)),
            media_type=f"{ICAL}; charset=utf-8",
            headers={"Content-Disposition": 'inline; filename="changes.ics"'},
        )
    return JSONResponse(found.model_dump(mode="json"))


@router.get("/{ref}", response_model=ChangeRead, responses=documented(etag=200))
async def get_change(change: ChangeDep, response: Response) -> ChangeRead:
    with_etag(response, change.version)
    return service.render(change)


@router.patch("/{ref}", response_model=ChangeRead, responses=UPDATE_CHANGE)
async def update_change(
    request: Request,
    change: LockedChange,
    session: SessionDep,
    principal: CurrentPrincipal,
    data: ChangeUpdate,
    response: Response,
) -> ChangeRead:
    check_if_match(request, change.version)
    updated = await service.update_change(session, change, data, principal)
    with_etag(response, updated.version)
    return updated


@router.get("/{ref}/transitions", response_model=list[Transition])
async def transitions(change: ChangeDep, principal: CurrentPrincipal) -> list[Transition]:
    return service.transitions(change, principal)


@router.get("/{ref}/history", response_model=list[HistoryRead])
async def history(session: SessionDep, change: ChangeDep) -> list[HistoryRead]:
    return await service.history(session, change)


@router.post(
    "/{ref}/approvals",
    status_code=201,
    response_model=ApprovalResult,
    responses=documented(
        conflict="the change is not awaiting this decision, or the caller has already decided this round",
        rules={"body.comment": "a rejection needs a comment"},
    ),
)
async def decide(
    ref: str, session: SessionDep, principal: CurrentPrincipal, data: ApprovalCreate, key: IdempotencyKey = None
) -> Response:
    return await create_once(
        session,
        principal.actor,
        key,
        {"ref": ref, **data.model_dump()},
        lambda: approvals.decide(session, ref, data, principal),
        version=lambda result: result.change.version,
    )


@router.get("/{ref}/approvals", response_model=list[ApprovalRead])
async def list_approvals(session: SessionDep, change: ChangeDep) -> list[ApprovalRead]:
    return [ApprovalRead.model_validate(a, from_attributes=True) for a in await approvals.approvals(session, change)]


@router.post(
    "/{ref}/notes", status_code=201, response_model=NoteRead, responses=documented(conflict="the change is final")
)
async def add_note(
    ref: str,
    session: SessionDep,
    change: ChangeDep,
    principal: CurrentPrincipal,
    data: NoteCreate,
    key: IdempotencyKey = None,
) -> Response:
    return await create_once(
        session,
        principal.actor,
        key,
        {"ref": ref, **data.model_dump()},
        lambda: service.add_note(session, change, data, principal),
    )


@router.get("/{ref}/notes", response_model=list[NoteRead])
async def list_notes(session: SessionDep, change: ChangeDep) -> list[NoteRead]:
    return [NoteRead.model_validate(n, from_attributes=True) for n in await service.notes(session, change)]


@router.get("/{ref}/conflicts", response_model=ConflictsRead)
async def conflicts(session: SessionDep, change: ChangeDep) -> ConflictsRead:
    """Every conflict of the planned window now: overlapping scheduled changes on a shared configuration item
    and blackout occurrences (non-blocking for emergency changes)."""
    return await calendar.change_conflicts(session, change)


@router.get(
    "/{ref}/next-slot",
    response_model=NextSlotRead,
    responses=documented(
        rules={
            "query.duration": "between one minute and 31 days; needed when the change has no planned window",
            "query.after": f"with an offset, {YEARS}",
        }
    ),
)
async def next_slot(
    session: SessionDep, change: ChangeDep, duration: Duration = None, after: AwareTime | None = None
) -> NextSlotRead:
    """The first window of `duration` (default: the planned window's length) starting at or after `after`
    (default: the next minute) that is free of conflicts and blackouts, within the search horizon."""
    return await calendar.next_slot(session, change, duration=duration, after=after)


# ---------------------------------------------------------------- blackout windows


@blackouts_router.post("", status_code=201, response_model=BlackoutWindowRead, responses=CREATE_BLACKOUT)
async def create_blackout(
    session: SessionDep, data: BlackoutWindowCreate, principal: CurrentPrincipal, key: IdempotencyKey = None
) -> Response:
    return await create_once(
        session,
        principal.actor,
        key,
        data.model_dump(),
        lambda: blackouts.create_blackout(session, data, principal),
        location=blackouts_router.prefix,
    )


@blackouts_router.get("", response_model=Page[BlackoutWindowRead])
async def list_blackouts(
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    sort: Annotated[str, sort_by(blackouts.SORTS)] = "-created_at",
) -> Page[BlackoutWindowRead]:
    items, next_cursor = await blackouts.list_blackouts(
        session, sort=parse_sort(sort, blackouts.SORTS), limit=limit, cursor=cursor
    )
    return Page(items=items, next_cursor=next_cursor)


@blackouts_router.get("/{window_id}", response_model=BlackoutWindowRead, responses=documented(etag=200))
async def get_blackout(window: BlackoutDep, response: Response) -> BlackoutWindowRead:
    with_etag(response, window.version)
    return blackouts.render(window)


@blackouts_router.patch("/{window_id}", response_model=BlackoutWindowRead, responses=UPDATE_BLACKOUT)
async def update_blackout(
    request: Request,
    window: LockedBlackout,
    session: SessionDep,
    principal: CurrentPrincipal,
    data: BlackoutWindowUpdate,
    response: Response,
) -> BlackoutWindowRead:
    check_if_match(request, window.version)
    updated = await blackouts.update_blackout(session, window, data, principal)
    with_etag(response, updated.version)
    return updated


@blackouts_router.delete("/{window_id}", status_code=204, responses=documented(if_match=True))
async def delete_blackout(
    request: Request, window: LockedBlackout, session: SessionDep, principal: CurrentPrincipal
) -> Response:
    check_if_match(request, window.version)
    await blackouts.delete_blackout(session, window, principal)
    return Response(status_code=204)


# ---------------------------------------------------------------- standard-change templates


@templates_router.post("", status_code=201, response_model=TemplateRead, responses=documented(etag=201, location=201))
async def create_template(
    session: SessionDep, data: TemplateCreate, principal: CurrentPrincipal, key: IdempotencyKey = None
) -> Response:
    return await create_once(
        session,
        principal.actor,
        key,
        data.model_dump(),
        lambda: templates.create_template(session, data, principal),
        location=templates_router.prefix,
    )


@templates_router.get("", response_model=Page[TemplateRead])
async def list_templates(
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    sort: Annotated[str, sort_by(templates.SORTS)] = "name",
    active: bool | None = None,
) -> Page[TemplateRead]:
    items, next_cursor = await templates.list_templates(
        session, sort=parse_sort(sort, templates.SORTS), limit=limit, cursor=cursor, active=active
    )
    return Page(items=items, next_cursor=next_cursor)


@templates_router.get("/{template_id}", response_model=TemplateRead, responses=documented(etag=200))
async def get_template(template: TemplateDep, response: Response) -> TemplateRead:
    with_etag(response, template.version)
    return templates.render(template)


@templates_router.patch("/{template_id}", response_model=TemplateRead, responses=documented(etag=200, if_match=True))
async def update_template(
    request: Request,
    template: LockedTemplate,
    session: SessionDep,
    principal: CurrentPrincipal,
    data: TemplateUpdate,
    response: Response,
) -> TemplateRead:
    check_if_match(request, template.version)
    updated = await templates.update_template(session, template, data, principal)
    with_etag(response, updated.version)
    return updated


@templates_router.delete("/{template_id}", status_code=204, responses=documented(if_match=True))
async def delete_template(
    request: Request, template: LockedTemplate, session: SessionDep, principal: CurrentPrincipal
) -> Response:
    check_if_match(request, template.version)
    await templates.delete_template(session, template, principal)
    return Response(status_code=204)
