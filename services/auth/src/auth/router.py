from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import JSONResponse
from itsm_shared.auth import CurrentPrincipal, Principal, Role, require_roles
from itsm_shared.db import SessionDep
from itsm_shared.http import IdempotencyKey, check_if_match, create_once, with_etag
from itsm_shared.pagination import Limit, Page

from auth import keys, tokens, users
from auth.config import get_settings
from auth.schemas import (
    ClientCreate,
    ClientCreated,
    ClientRead,
    Me,
    SigningKeyRead,
    TokenRequest,
    TokenResponse,
    UserCreate,
    UserRead,
    UserUpdate,
)

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.post("/token", response_model=TokenResponse, summary="OAuth2 token endpoint (RFC 6749)")
async def token(
    session: SessionDep,
    grant_type: Annotated[str, Form()],
    username: Annotated[str | None, Form()] = None,
    password: Annotated[str | None, Form()] = None,
    refresh_token: Annotated[str | None, Form()] = None,
    client_id: Annotated[str | None, Form()] = None,
    client_secret: Annotated[str | None, Form()] = None,
    scope: Annotated[str | None, Form()] = None,  # accepted (RFC 6749 §3.3); the token's scope is the roles
) -> JSONResponse:
    form = TokenRequest(
        grant_type=grant_type,
        username=username,
        password=password,
        refresh_token=refresh_token,
        client_id=client_id,
        client_secret=client_secret,
    )
    result = await tokens.issue_token(session, get_settings(), form)
    return JSONResponse(result.model_dump(exclude_none=True), headers=NO_STORE)


@router.post("/revoke", status_code=200, summary="Revoke a refresh token and its family (RFC 7009)")
async def revoke(
    session: SessionDep,
    token: Annotated[str, Form()],
    token_type_hint: Annotated[str | None, Form()] = None,
) -> Response:
    await tokens.revoke(session, token)
    return Response(status_code=200, headers=NO_STORE)


@router.get("/jwks.json", summary="Public signing keys (RFC 7517)")
async def jwks(session: SessionDep) -> JSONResponse:
    return JSONResponse(await keys.jwks(session), headers={"Cache-Control": "public, max-age=60"})


@router.get("/me", response_model=Me)
async def me(session: SessionDep, principal: CurrentPrincipal) -> Me:
    return await users.describe_principal(session, principal)


@router.post("/users", status_code=201, response_model=UserRead)
async def create_user(session: SessionDep, data: UserCreate, admin: Admin, key: IdempotencyKey = None) -> JSONResponse:
    return await create_once(
        session,
        admin.actor,
        key,
        data.model_dump(),
        lambda: users.create_user(session, data, admin),
        location=f"{router.prefix}/users",
    )


@router.get("/users", response_model=Page[UserRead])
async def list_users(
    session: SessionDep,
    _: Admin,
    limit: Limit = 50,
    cursor: str | None = None,
    sort: str = "-created_at",
    role: str | None = None,
    active: bool | None = None,
) -> Page[UserRead]:
    return await users.list_users(session, sort=sort, limit=limit, cursor=cursor, role=role, active=active)


@router.get("/users/{user_id}", response_model=UserRead)
async def get_user(session: SessionDep, _: Admin, user_id: uuid.UUID, response: Response) -> UserRead:
    user = await users.get_user(session, user_id)
    with_etag(response, user.version)
    return users.user_view(user)


@router.patch("/users/{user_id}", response_model=UserRead)
async def update_user(
    request: Request, session: SessionDep, admin: Admin, user_id: uuid.UUID, data: UserUpdate, response: Response
) -> UserRead:
    user = await users.get_user(session, user_id)
    check_if_match(request, user.version)
    updated = await users.update_user(session, user, data, admin)
    with_etag(response, updated.version)
    return updated


@router.post("/clients", status_code=201, response_model=ClientCreated)
async def create_client(
    session: SessionDep, data: ClientCreate, admin: Admin, key: IdempotencyKey = None
) -> JSONResponse:
    response = await create_once(
        session, admin.actor, key, data.model_dump(), lambda: users.create_client(session, data, admin)
    )
    response.headers.update(NO_STORE)  # the answer holds the client's secret, a replay too
    return response


@router.get("/clients", response_model=list[ClientRead])
async def list_clients(session: SessionDep, _: Admin) -> list[ClientRead]:
    return await users.list_clients(session)


@router.get("/keys", response_model=list[SigningKeyRead])
async def list_keys(session: SessionDep, _: Admin) -> list[SigningKeyRead]:
    return await keys.list_signing_keys(session)


@router.post("/keys/rotate", status_code=201, response_model=SigningKeyRead)
async def rotate_keys(session: SessionDep, _: Admin) -> SigningKeyRead:
    return await keys.rotate_signing_key(session, get_settings())
