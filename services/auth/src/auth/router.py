from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import JSONResponse
from itsm_shared.auth import CurrentPrincipal, Principal, Role, require_roles
from itsm_shared.db import SessionDep
from itsm_shared.http import IdempotencyKey, IdempotentRequest, check_if_match, with_etag
from itsm_shared.pagination import Page, parse_sort

from auth import service
from auth.config import get_settings
from auth.errors import OAuthError
from auth.schemas import (
    ClientCreate,
    ClientCreated,
    ClientRead,
    Me,
    SigningKeyRead,
    TokenResponse,
    UserCreate,
    UserRead,
    UserUpdate,
)

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _required(value: str | None, name: str) -> str:
    if not value:
        raise OAuthError("invalid_request", f"missing parameter: {name}")
    return value


@router.post("/token", response_model=TokenResponse, summary="OAuth2 token endpoint (RFC 6749)")
async def token(
    session: SessionDep,
    grant_type: Annotated[str, Form()],
    username: Annotated[str | None, Form()] = None,
    password: Annotated[str | None, Form()] = None,
    refresh_token: Annotated[str | None, Form()] = None,
    client_id: Annotated[str | None, Form()] = None,
    client_secret: Annotated[str | None, Form()] = None,
    scope: Annotated[str | None, Form()] = None,
) -> JSONResponse:
    settings = get_settings()
    if grant_type == "password":
        result = await service.password_grant(
            session, settings, _required(username, "username"), _required(password, "password")
        )
    elif grant_type == "refresh_token":
        result = await service.refresh_grant(session, settings, _required(refresh_token, "refresh_token"))
    elif grant_type == "client_credentials":
        result = await service.client_credentials_grant(
            session, settings, _required(client_id, "client_id"), _required(client_secret, "client_secret")
        )
    else:
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
    return JSONResponse(result.model_dump(exclude_none=True), headers=NO_STORE)


@router.post("/revoke", status_code=200, summary="Revoke a refresh token and its family (RFC 7009)")
async def revoke(
    session: SessionDep,
    token: Annotated[str, Form()],
    token_type_hint: Annotated[str | None, Form()] = None,
) -> Response:
    await service.revoke(session, token)
    return Response(status_code=200, headers=NO_STORE)


@router.get("/jwks.json", summary="Public signing keys (RFC 7517)")
async def jwks(session: SessionDep) -> JSONResponse:
    keys = await service.published_keys(session)
    return JSONResponse({"keys": [k.public_jwk for k in keys]}, headers={"Cache-Control": "public, max-age=60"})


@router.get("/me", response_model=Me)
async def me(session: SessionDep, principal: CurrentPrincipal) -> Me:
    if principal.kind == "user":
        user = await service.get_user(session, principal.id)
        return Me(
            id=user.id,
            kind="user",
            username=user.username,
            full_name=user.full_name,
            email=user.email,
            roles=user.roles,
        )
    return Me(id=principal.id, kind=principal.kind, username=principal.name, roles=sorted(principal.roles))


@router.post("/users", status_code=201, response_model=UserRead)
async def create_user(
    request: Request, session: SessionDep, data: UserCreate, admin: Admin, key: IdempotencyKey = None
) -> JSONResponse:
    idem = IdempotentRequest(session, admin.actor, key, data.model_dump())
    if replay := await idem.begin():
        return replay
    user = await service.create_user(session, data, admin)
    view = service.user_view(user)
    return await idem.complete(
        201, view, headers={"ETag": f'"{user.version}"', "Location": f"{router.prefix}/users/{user.id}"}
    )


@router.get("/users", response_model=Page[UserRead])
async def list_users(
    session: SessionDep,
    _: Admin,
    limit: int = 50,
    cursor: str | None = None,
    sort: str = "-created_at",
    role: str | None = None,
    active: bool | None = None,
) -> Page[UserRead]:
    items, next_cursor = await service.list_users(
        session, sort=parse_sort(sort, service.USER_SORTS), limit=limit, cursor=cursor, role=role, active=active
    )
    return Page(items=[service.user_view(u) for u in items], next_cursor=next_cursor)


@router.get("/users/{user_id}", response_model=UserRead)
async def get_user(session: SessionDep, _: Admin, user_id: uuid.UUID, response: Response) -> UserRead:
    user = await service.get_user(session, user_id)
    with_etag(response, user.version)
    return service.user_view(user)


@router.patch("/users/{user_id}", response_model=UserRead)
async def update_user(
    request: Request, session: SessionDep, admin: Admin, user_id: uuid.UUID, data: UserUpdate, response: Response
) -> UserRead:
    user = await service.get_user(session, user_id)
    check_if_match(request, user.version)
    user = await service.update_user(session, user, data, admin)
    with_etag(response, user.version)
    return service.user_view(user)


@router.post("/clients", status_code=201, response_model=ClientCreated)
async def create_client(
    session: SessionDep, data: ClientCreate, admin: Admin, key: IdempotencyKey = None
) -> JSONResponse:
    idem = IdempotentRequest(session, admin.actor, key, data.model_dump())
    if replay := await idem.begin():
        return replay
    client, secret = await service.create_client(session, data, admin)
    body = ClientCreated(**ClientRead.model_validate(client, from_attributes=True).model_dump(), client_secret=secret)
    return await idem.complete(201, body, headers=NO_STORE)


@router.get("/clients", response_model=list[ClientRead])
async def list_clients(session: SessionDep, _: Admin) -> list[ClientRead]:
    return [ClientRead.model_validate(c, from_attributes=True) for c in await service.list_clients(session)]


@router.get("/keys", response_model=list[SigningKeyRead])
async def list_keys(session: SessionDep, _: Admin) -> list[SigningKeyRead]:
    current = await service.signing_key(session)
    return [
        SigningKeyRead(
            kid=k.kid,
            created_at=k.created_at,
            retire_at=k.retire_at,
            signing=current is not None and k.kid == current.kid,
        )
        for k in await service.published_keys(session)
    ]


@router.post("/keys/rotate", status_code=201, response_model=SigningKeyRead)
async def rotate_keys(session: SessionDep, _: Admin) -> SigningKeyRead:
    key = await service.rotate_signing_key(session, get_settings())
    return SigningKeyRead(kid=key.kid, created_at=key.created_at, retire_at=None, signing=True)
