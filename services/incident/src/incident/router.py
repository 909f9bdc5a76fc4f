from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from itsm_shared.auth import CurrentPrincipal, Principal, Role, require_roles
from itsm_shared.db import SessionDep
from itsm_shared.http import (
    IdempotencyKey,
    check_if_match,
    create_once,
    with_etag,
)
from itsm_shared.openapi import documented
from itsm_shared.pagination import CommaSeparated, Cursor, Limit, Page, page_response, parse_sort, sort_by
from itsm_shared.schemas import HistoryRead, Timestamp, Transition

from incident import policies, queries, service
from incident.models import Incident, RequesterPolicy, Status
from incident.schemas import (
    IncidentCreate,
    IncidentRead,
    IncidentUpdate,
    NoteCreate,
    NoteRead,
    RequesterPolicyRead,
    RequesterPolicyWrite,
    SlaPolicyRead,
    SlaPolicyWrite,
)

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])
policies_router = APIRouter(prefix="/api/v1/sla-policies", tags=["sla-policies"])


async def incident_by_ref(ref: str, session: SessionDep, principal: CurrentPrincipal) -> Incident:
    return await queries.visible(session, ref, principal)


async def locked_incident(ref: str, session: SessionDep, principal: CurrentPrincipal) -> Incident:
    return await queries.visible(session, ref, principal, for_update=True)


IncidentDep = Annotated[Incident, Depends(incident_by_ref)]
LockedIncident = Annotated[Incident, Depends(locked_incident)]
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]


async def locked_requester_policy(_: Admin, session: SessionDep) -> RequesterPolicy:
    return await policies.locked_requester_policy(session)


# Before /{ref}, which would take "requester-policy" for an incident's number.
@router.get(
    "/requester-policy", response_model=RequesterPolicyRead, tags=["requester-policy"], responses=documented(etag=200)
)
async def get_requester_policy(session: SessionDep, _: CurrentPrincipal, response: Response) -> RequesterPolicyRead:
    current = await policies.requester_policy(session)
    with_etag(response, current.version)
    return RequesterPolicyRead.model_validate(current, from_attributes=True)


@router.put(
    "/requester-policy",
    response_model=RequesterPolicyRead,
    tags=["requester-policy"],
    responses=documented(etag=200, if_match=True),
)
async def put_requester_policy(
    request: Request,
    session: SessionDep,
    current: Annotated[RequesterPolicy, Depends(locked_requester_policy)],
    data: RequesterPolicyWrite,
    response: Response,
) -> RequesterPolicyRead:
    check_if_match(request, current.version)
    updated = await policies.put_requester_policy(session, current, data)
    with_etag(response, updated.version)
    return RequesterPolicyRead.model_validate(updated, from_attributes=True)


@router.post(
    "",
    status_code=201,
    response_model=IncidentRead,
    responses=documented(
        etag=201,
        location=201,
        rules={
            "body.parent_id": "an incident that exists, is not deleted and is not this one or below it",
            "body.caller_id": "a requester raises incidents for themselves only",
        },
    ),
)
async def create_incident(
    session: SessionDep, data: IncidentCreate, principal: CurrentPrincipal, key: IdempotencyKey = None
) -> Response:
    return await create_once(
        session,
        principal.actor,
        key,
        data,
        lambda: service.open_incident(session, data, principal),
        location=router.prefix,
    )


@router.get("", response_model=Page[IncidentRead])
async def list_incidents(
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: Limit = 50,
    cursor: Cursor = None,
    sort: Annotated[str, sort_by(queries.SORTS)] = "-created_at",
    status: Annotated[list[Status] | None, Query(), CommaSeparated] = None,
    priority: Annotated[int | None, Query(ge=1, le=5)] = None,
    assignee_id: uuid.UUID | None = None,
    assignment_group: str | None = None,
    category: str | None = None,
    caller_id: uuid.UUID | None = None,
    problem_id: uuid.UUID | None = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
    sla_breached: bool | None = None,
    q: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    filters = {
        "status": status,
        "priority": priority,
        "assignee_id": assignee_id,
        "assignment_group": assignment_group,
        "category": category,
        "caller_id": caller_id,
        "problem_id": problem_id,
        "created_after": created_after,
        "created_before": created_before,
        "sla_breached": sla_breached,
        "q": q,
    }
    items, next_cursor = await queries.list_incidents(
        session, principal, sort=parse_sort(sort, queries.SORTS), limit=limit, cursor=cursor, filters=filters
    )
    return page_response(items, next_cursor)


@router.get("/{ref}", response_model=IncidentRead, responses=documented(etag=200))
async def get_incident(session: SessionDep, incident: IncidentDep, response: Response) -> IncidentRead:
    with_etag(response, incident.version)
    return await queries.read(session, incident)


@router.patch(
    "/{ref}",
    response_model=IncidentRead,
    responses=documented(
        etag=200,
        if_match=True,
        conflict="the incident is closed or cancelled, or cannot move to that status",
        rules={
            "body.parent_id": "an incident that exists, is not deleted and is not this one or below it",
            "body.hold_reason": "required to move to on_hold, and only then (see `GET …/transitions`)",
            "body.resolution_code": "required to move to resolved, and kept while resolved",
            "body.resolution_notes": "required to move to resolved, and kept while resolved",
        },
    ),
)
async def update_incident(
    request: Request,
    incident: LockedIncident,
    session: SessionDep,
    principal: CurrentPrincipal,
    data: IncidentUpdate,
    response: Response,
) -> IncidentRead:
    check_if_match(request, incident.version)
    updated = await service.update_incident(session, incident, data, principal)
    with_etag(response, updated.version)
    return updated


@router.delete("/{ref}", status_code=204, responses=documented(if_match=True))
async def delete_incident(
    request: Request, incident: LockedIncident, session: SessionDep, principal: CurrentPrincipal
) -> Response:
    check_if_match(request, incident.version)
    await service.delete_incident(session, incident, principal)
    return Response(status_code=204)


@router.get("/{ref}/transitions", response_model=list[Transition])
async def transitions(incident: IncidentDep, principal: CurrentPrincipal) -> list[Transition]:
    return queries.transitions(incident, principal)


@router.post(
    "/{ref}/notes",
    status_code=201,
    response_model=NoteRead,
    responses=documented(conflict="the incident is closed or cancelled, or the Idempotency-Key is in flight"),
)
async def add_note(
    ref: str,
    session: SessionDep,
    incident: LockedIncident,
    principal: CurrentPrincipal,
    data: NoteCreate,
    key: IdempotencyKey = None,
) -> Response:
    async def create() -> NoteRead:
        note = await service.add_note(session, incident, data, principal)
        return NoteRead.model_validate(note, from_attributes=True)

    return await create_once(session, principal.actor, key, {"ref": ref, **data.model_dump()}, create)


@router.get("/{ref}/notes", response_model=list[NoteRead])
async def list_notes(session: SessionDep, incident: IncidentDep, principal: CurrentPrincipal) -> list[NoteRead]:
    return [NoteRead.model_validate(n, from_attributes=True) for n in await queries.notes(session, incident, principal)]


@router.get("/{ref}/history", response_model=list[HistoryRead])
async def history(session: SessionDep, incident: IncidentDep) -> list[HistoryRead]:
    return await queries.history(session, incident)


@policies_router.get("", response_model=list[SlaPolicyRead])
async def list_policies(session: SessionDep, _: CurrentPrincipal) -> list[SlaPolicyRead]:
    return [SlaPolicyRead.model_validate(p, from_attributes=True) for p in await policies.policies(session)]


@policies_router.put(
    "/{priority}",
    response_model=SlaPolicyRead,
    responses=documented(
        rules={
            "body.response_minutes": "at most resolution_minutes",
            "body.calendar": "a known IANA time zone, real holiday dates, end after start",
        }
    ),
)
async def put_policy(
    priority: Annotated[int, Path(ge=1, le=5)], session: SessionDep, _: Admin, data: SlaPolicyWrite
) -> SlaPolicyRead:
    return SlaPolicyRead.model_validate(await policies.put_policy(session, priority, data), from_attributes=True)
