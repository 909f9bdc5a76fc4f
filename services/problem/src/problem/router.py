from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from itsm_shared.auth import CurrentPrincipal
from itsm_shared.db import SessionDep
from itsm_shared.http import (
    IdempotencyKey,
    check_if_match,
    create_once,
    with_etag,
)
from itsm_shared.openapi import documented
from itsm_shared.pagination import CommaSeparated, Cursor, Limit, Page, parse_sort, sort_by
from itsm_shared.schemas import HistoryRead, Transition

from problem import links, service
from problem.models import Problem, Status
from problem.schemas import (
    LinkCreate,
    LinkedIncident,
    NoteCreate,
    NoteRead,
    ProblemCreate,
    ProblemRead,
    ProblemUpdate,
)

router = APIRouter(prefix="/api/v1/problems", tags=["problems"])
known_errors_router = APIRouter(prefix="/api/v1/known-errors", tags=["known-errors"])


async def problem_by_ref(ref: str, session: SessionDep, principal: CurrentPrincipal) -> Problem:
    return await service.visible(session, ref, principal)


async def locked_problem(ref: str, session: SessionDep, principal: CurrentPrincipal) -> Problem:
    return await service.visible(session, ref, principal, for_update=True)


ProblemDep = Annotated[Problem, Depends(problem_by_ref)]
LockedProblem = Annotated[Problem, Depends(locked_problem)]
Statuses = Annotated[list[Status] | None, Query(), CommaSeparated]


@router.post("", status_code=201, response_model=ProblemRead, responses=documented(etag=201, location=201))
async def create_problem(
    session: SessionDep, data: ProblemCreate, principal: CurrentPrincipal, key: IdempotencyKey = None
) -> Response:
    return await create_once(
        session,
        principal.actor,
        key,
        data,
        lambda: service.open_problem(session, data, principal),
        location=router.prefix,
    )


@router.get("", response_model=Page[ProblemRead])
async def list_problems(
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: Limit = 50,
    cursor: Cursor = None,
    sort: Annotated[str, sort_by(service.SORTS)] = "-created_at",
    status: Statuses = None,
    priority: Annotated[int | None, Query(ge=1, le=5)] = None,
    category: str | None = None,
    configuration_item: str | None = None,
    assignee_id: uuid.UUID | None = None,
    assignment_group: str | None = None,
    known_error: bool | None = None,
    q: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[ProblemRead]:
    filters = {
        "status": status,
        "priority": priority,
        "category": category,
        "configuration_item": configuration_item,
        "assignee_id": assignee_id,
        "assignment_group": assignment_group,
        "known_error": known_error,
        "q": q,
    }
    items, next_cursor = await service.list_problems(
        session, principal, sort=parse_sort(sort, service.SORTS), limit=limit, cursor=cursor, filters=filters
    )
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{ref}", response_model=ProblemRead, responses=documented(etag=200))
async def get_problem(problem: ProblemDep, response: Response) -> ProblemRead:
    with_etag(response, problem.version)
    return service.render(problem)


@router.patch(
    "/{ref}",
    response_model=ProblemRead,
    responses=documented(
        etag=200,
        if_match=True,
        conflict="the problem is closed or cancelled, or cannot move to that status",
        rules={
            "body.root_cause": "required to move to fix_in_progress (`GET …/transitions` lists what each move needs)",
            "body.resolution_code": "required to move to resolved, one of the resolution codes",
            "body.workaround": "required while the problem is a known error",
            "body.resolve_linked_incidents": "only with a move to resolved",
        },
    ),
)
async def update_problem(
    request: Request,
    problem: LockedProblem,
    session: SessionDep,
    principal: CurrentPrincipal,
    data: ProblemUpdate,
    response: Response,
) -> ProblemRead:
    check_if_match(request, problem.version)
    updated = await service.update_problem(session, problem, data, principal)
    with_etag(response, updated.version)
    return updated


@router.get("/{ref}/transitions", response_model=list[Transition])
async def transitions(problem: ProblemDep, principal: CurrentPrincipal) -> list[Transition]:
    return service.transitions(problem, principal)


@router.get("/{ref}/incidents", response_model=list[LinkedIncident])
async def linked_incidents(session: SessionDep, problem: ProblemDep) -> list[LinkedIncident]:
    return await links.linked_incidents(session, problem)


@router.post(
    "/{ref}/incidents",
    status_code=201,
    response_model=LinkedIncident,
    responses=documented(
        conflict="the problem is closed or cancelled, or the incident is linked to another problem",
        rules={"body.incident_id": "an incident the problem service knows (from the incident events), not deleted"},
    ),
)
async def link_incident(
    session: SessionDep, problem: LockedProblem, principal: CurrentPrincipal, data: LinkCreate
) -> LinkedIncident:
    return await links.link_incident(session, problem, data.incident_id, principal)


@router.delete("/{ref}/incidents/{incident_id}", status_code=204)
async def unlink_incident(
    incident_id: uuid.UUID, session: SessionDep, problem: LockedProblem, principal: CurrentPrincipal
) -> Response:
    await links.unlink_incident(session, problem, incident_id, principal)
    return Response(status_code=204)


@router.post(
    "/{ref}/notes", status_code=201, response_model=NoteRead, responses=documented(conflict="the problem is final")
)
async def add_note(
    ref: str,
    session: SessionDep,
    problem: ProblemDep,
    principal: CurrentPrincipal,
    data: NoteCreate,
    key: IdempotencyKey = None,
) -> Response:
    async def create() -> NoteRead:
        return NoteRead.model_validate(await service.add_note(session, problem, data, principal), from_attributes=True)

    return await create_once(session, principal.actor, key, {"ref": ref, **data.model_dump()}, create)


@router.get("/{ref}/notes", response_model=list[NoteRead])
async def list_notes(session: SessionDep, problem: ProblemDep) -> list[NoteRead]:
    return [NoteRead.model_validate(n, from_attributes=True) for n in await service.notes(session, problem)]


@router.get("/{ref}/history", response_model=list[HistoryRead])
async def history(session: SessionDep, problem: ProblemDep) -> list[HistoryRead]:
    return await service.history(session, problem)


@known_errors_router.get("", response_model=Page[ProblemRead])
async def known_errors(
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: Limit = 50,
    cursor: Cursor = None,
    sort: Annotated[str, sort_by(service.SORTS)] = "-created_at",
    q: Annotated[str | None, Query(max_length=500)] = None,
    configuration_item: str | None = None,
    category: str | None = None,
    status: Statuses = None,
) -> Page[ProblemRead]:
    filters = {"status": status, "configuration_item": configuration_item, "category": category, "q": q}
    items, next_cursor = await service.list_problems(
        session,
        principal,
        sort=parse_sort(sort, service.SORTS),
        limit=limit,
        cursor=cursor,
        filters=filters,
        known_errors_only=True,
    )
    return Page(items=items, next_cursor=next_cursor)
