from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from itsm_shared.auth import CurrentPrincipal, Principal, Role, require_roles
from itsm_shared.db import SessionDep
from itsm_shared.http import (
    IdempotencyKey,
    check_if_match,
    create_once,
    with_etag,
)
from itsm_shared.pagination import Page, listed, parse_sort
from itsm_shared.schemas import HistoryRead, Transition

from incident import service
from incident.models import Incident
from incident.schemas import (
    IncidentCreate,
    IncidentRead,
    IncidentUpdate,
    NoteCreate,
    NoteRead,
    SlaPolicyRead,
    SlaPolicyWrite,
)

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])
policies_router = APIRouter(prefix="/api/v1/sla-policies", tags=["sla-policies"])


async def incident_by_ref(ref: str, session: SessionDep, principal: CurrentPrincipal) -> Incident:
    return await service.visible_incident(session, ref, principal)


IncidentDep = Annotated[Incident, Depends(incident_by_ref)]


@router.post("", status_code=201, response_model=IncidentRead)
async def create_incident(
    session: SessionDep, data: IncidentCreate, principal: CurrentPrincipal, key: IdempotencyKey = None
) -> JSONResponse:
    return await create_once(
        session,
        principal.actor,
        key,
        data.model_dump(),
        lambda: service.open_incident(session, data, principal),
        location=router.prefix,
    )


@router.get("", response_model=Page[IncidentRead])
async def list_incidents(
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: int = 50,
    cursor: str | None = None,
    sort: str = "-created_at",
    status: Annotated[list[str] | None, Query()] = None,
    priority: int | None = None,
    assignee_id: str | None = None,
    assignment_group: str | None = None,
    category: str | None = None,
    caller_id: str | None = None,
    problem_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    sla_breached: bool | None = None,
    q: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[IncidentRead]:
    statuses = listed(status)
    filters = {
        "status": statuses,
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
    items, next_cursor = await service.list_incidents(
        session,
        principal,
        sort=parse_sort(sort, service.SORTS),
        limit=limit,
        cursor=cursor,
        filters=service.validated_filters(filters),
    )
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{ref}", response_model=IncidentRead)
async def get_incident(session: SessionDep, incident: IncidentDep, response: Response) -> IncidentRead:
    with_etag(response, incident.version)
    return await service.read(session, incident)


@router.patch("/{ref}", response_model=IncidentRead)
async def update_incident(
    request: Request,
    ref: str,
    session: SessionDep,
    principal: CurrentPrincipal,
    data: IncidentUpdate,
    response: Response,
) -> IncidentRead:
    incident = await service.visible_incident(session, ref, principal, for_update=True)
    check_if_match(request, incident.version)
    updated = await service.update_incident(session, incident, data, principal)
    with_etag(response, updated.version)
    return updated


@router.delete("/{ref}", status_code=204)
async def delete_incident(request: Request, ref: str, session: SessionDep, principal: CurrentPrincipal) -> Response:
    incident = await service.visible_incident(session, ref, principal, for_update=True)
    check_if_match(request, incident.version)
    await service.delete_incident(session, incident, principal)
    return Response(status_code=204)


@router.get("/{ref}/transitions", response_model=list[Transition])
async def transitions(incident: IncidentDep, principal: CurrentPrincipal) -> list[Transition]:
    return [Transition(**t) for t in service.transitions(incident, principal)]


@router.post("/{ref}/notes", status_code=201, response_model=NoteRead)
async def add_note(ref: str, session: SessionDep, principal: CurrentPrincipal, data: NoteCreate) -> NoteRead:
    incident = await service.visible_incident(session, ref, principal, for_update=True)
    note = await service.add_note(session, incident, data, principal)
    return NoteRead.model_validate(note, from_attributes=True)


@router.get("/{ref}/notes", response_model=list[NoteRead])
async def list_notes(session: SessionDep, incident: IncidentDep, principal: CurrentPrincipal) -> list[NoteRead]:
    return [NoteRead.model_validate(n, from_attributes=True) for n in await service.notes(session, incident, principal)]


@router.get("/{ref}/history", response_model=list[HistoryRead])
async def history(session: SessionDep, incident: IncidentDep) -> list[HistoryRead]:
    return [HistoryRead.model_validate(h, from_attributes=True) for h in await service.history(session, incident)]


Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]


@policies_router.get("", response_model=list[SlaPolicyRead])
async def list_policies(session: SessionDep, _: CurrentPrincipal) -> list[SlaPolicyRead]:
    return [SlaPolicyRead.model_validate(p, from_attributes=True) for p in await service.policies(session)]


@policies_router.put("/{priority}", response_model=SlaPolicyRead)
async def put_policy(priority: int, session: SessionDep, _: Admin, data: SlaPolicyWrite) -> SlaPolicyRead:
    return SlaPolicyRead.model_validate(await service.put_policy(session, priority, data), from_attributes=True)
