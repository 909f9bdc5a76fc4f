from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Path, Request, Response
from fastapi.responses import JSONResponse
from itsm_shared.auth import CurrentPrincipal, Principal, Role, require_roles
from itsm_shared.db import SessionDep
from itsm_shared.http import IdempotencyKey, check_if_match, create_once, with_etag
from itsm_shared.openapi import documented
from itsm_shared.pagination import Cursor, Limit, Page, sort_by

from auth import keys, metadata, tokens, users
from auth.config import MAX_PASSWORD, get_settings
from auth.errors import invalid_client
from auth.schemas import (
    MAX_AUTHORIZATION,
    MAX_CLIENT_ID,
    MAX_GRANT_TYPE,
    MAX_SCOPE,
    MAX_SECRET,
    MAX_TOKEN,
    MAX_USERNAME,
    ClientCreate,
    ClientCreated,
    ClientRead,
    ClientUpdate,
    Me,
    ServerMetadata,
    SigningKeyRead,
    TokenRequest,
    TokenResponse,
    UserCreate,
    UserRead,
    UserUpdate,
)

router = APIRouter(prefix=metadata.API_PREFIX, tags=["auth"])
# RFC 8414 §3: at the root, where the issuer's URL puts it (the gateway routes it to this service).
well_known = APIRouter(tags=["auth"])
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def client_address(request: Request) -> str:
    """The caller's address as the gateway reports it (X-Forwarded-For, counted from the right)."""
    peer = request.client.host if request.client else None
    return tokens.client_address(request.headers.get("X-Forwarded-For"), peer, get_settings().forwarded_for_depth)


ClientAddress = Annotated[str, Depends(client_address)]


def authorization_header(request: Request) -> str | None:
    """The Authorization header, for client authentication by HTTP Basic (tokens.basic_credentials). Read here
    rather than declared as a header parameter: OpenAPI ignores a parameter named Authorization."""
    value = request.headers.get("Authorization")
    if value is not None and len(value) > MAX_AUTHORIZATION:
        raise invalid_client("the Authorization header is too long")
    return value


Authorization = Annotated[str | None, Depends(authorization_header)]
ClientId = Annotated[str, Path(max_length=MAX_CLIENT_ID, pattern=r"^[A-Za-z0-9_.-]+$")]
Kid = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@router.post(
    "/token",
    response_model=TokenResponse,
    summary="OAuth2 token endpoint (RFC 6749)",
    responses=documented(
        more={
            400: "RFC 6749 §5.2 error (`error`: invalid_request, invalid_grant, unsupported_grant_type ...)",
            401: "client authentication failed (`error`: invalid_client), with WWW-Authenticate: Basic",
        }
    ),
)
async def token(
    session: SessionDep,
    address: ClientAddress,
    authorization: Authorization,
    grant_type: Annotated[str, Form(min_length=1, max_length=MAX_GRANT_TYPE)],
    username: Annotated[str | None, Form(max_length=MAX_USERNAME)] = None,
    password: Annotated[str | None, Form(max_length=MAX_PASSWORD)] = None,
    refresh_token: Annotated[str | None, Form(max_length=MAX_SECRET)] = None,
    client_id: Annotated[str | None, Form(max_length=MAX_CLIENT_ID)] = None,
    client_secret: Annotated[str | None, Form(max_length=MAX_SECRET)] = None,
    # Accepted (RFC 6749 §3.3); the token's scope is the roles.
    scope: Annotated[str | None, Form(max_length=MAX_SCOPE)] = None,
) -> JSONResponse:
    form = TokenRequest(
        grant_type=grant_type,
        username=username,
        password=password,
        refresh_token=refresh_token,
        client_id=client_id,
        client_secret=client_secret,
        authorization=authorization,
    )
    result = await tokens.issue_token(session, get_settings(), form, address)
    return JSONResponse(result.model_dump(exclude_none=True), headers=NO_STORE)


@router.post(
    "/revoke",
    status_code=200,
    response_class=Response,
    summary="Revoke a refresh token and its family (RFC 7009)",
    responses={200: {"description": "Revoked, or not a token of ours (RFC 7009 §2.2): an empty answer"}},
)
async def revoke(
    session: SessionDep,
    token: Annotated[str, Form(min_length=1, max_length=MAX_TOKEN)],
    token_type_hint: Annotated[str | None, Form(max_length=MAX_GRANT_TYPE)] = None,
) -> Response:
    await tokens.revoke(session, token)
    return Response(status_code=200, headers=NO_STORE)


@well_known.get(
    metadata.WELL_KNOWN_PATH, response_model=ServerMetadata, summary="Authorization server metadata (RFC 8414)"
)
async def server_metadata(request: Request) -> JSONResponse:
    document = metadata.server_metadata(get_settings(), str(request.base_url))
    return JSONResponse(document.model_dump(), headers={"Cache-Control": "public, max-age=300"})


@router.get("/jwks.json", summary="Public signing keys (RFC 7517)")
async def jwks(session: SessionDep) -> JSONResponse:
    return JSONResponse(await keys.jwks(session), headers={"Cache-Control": "public, max-age=60"})


@router.get("/me", response_model=Me)
async def me(session: SessionDep, principal: CurrentPrincipal) -> Me:
    return await users.describe_principal(session, principal)


@router.post(
    "/users",
    status_code=201,
    response_model=UserRead,
    responses=documented(etag=201, location=201, conflict="the username is taken"),
)
async def create_user(session: SessionDep, data: UserCreate, admin: Admin, key: IdempotencyKey = None) -> Response:
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
    cursor: Cursor = None,
    sort: Annotated[str, sort_by(users.USER_SORTS)] = "-created_at",
    role: str | None = None,
    active: bool | None = None,
) -> Page[UserRead]:
    return await users.list_users(session, sort=sort, limit=limit, cursor=cursor, role=role, active=active)


@router.get("/users/{user_id}", response_model=UserRead, responses=documented(etag=200))
async def get_user(session: SessionDep, _: Admin, user_id: uuid.UUID, response: Response) -> UserRead:
    user = await users.get_user(session, user_id)
    with_etag(response, user.version)
    return await users.user_read(session, user)


@router.patch("/users/{user_id}", response_model=UserRead, responses=documented(etag=200, if_match=True))
async def update_user(
    request: Request,
    session: SessionDep,
    admin: Admin,
    user_id: uuid.UUID,
    data: UserUpdate,
    response: Response,
    background: BackgroundTasks,
) -> UserRead:
    user = await users.get_user(session, user_id, for_update=True)
    check_if_match(request, user.version)
    updated = await users.update_user(session, user, data, admin)
    reload_keys_after_commit(request, background)  # a revoked subject is refused here at once
    with_etag(response, updated.version)
    return updated


@router.post(
    "/users/{user_id}/unlock",
    response_model=UserRead,
    summary="Clear the user's failed logins",
    responses=documented(etag=200),
)
async def unlock_user(session: SessionDep, admin: Admin, user_id: uuid.UUID, response: Response) -> UserRead:
    user = await users.get_user(session, user_id)
    with_etag(response, user.version)
    return await users.unlock_user(session, user, admin)


@router.post("/clients", status_code=201, response_model=ClientCreated, responses=documented(etag=201))
async def create_client(session: SessionDep, data: ClientCreate, admin: Admin, key: IdempotencyKey = None) -> Response:
    response = await create_once(
        session, admin.actor, key, data.model_dump(), lambda: users.create_client(session, data, admin)
    )
    response.headers.update(NO_STORE)  # the answer holds the client's secret, a replay too
    return response


@router.get("/clients", response_model=list[ClientRead])
async def list_clients(session: SessionDep, _: Admin) -> list[ClientRead]:
    return await users.list_clients(session)


@router.get("/clients/{client_id}", response_model=ClientRead, responses=documented(etag=200))
async def get_client(session: SessionDep, _: Admin, client_id: ClientId, response: Response) -> ClientRead:
    client = await users.get_client(session, client_id)
    with_etag(response, client.version)
    return users.client_view(client)


@router.patch("/clients/{client_id}", response_model=ClientRead, responses=documented(etag=200, if_match=True))
async def update_client(
    request: Request,
    session: SessionDep,
    admin: Admin,
    client_id: ClientId,
    data: ClientUpdate,
    response: Response,
    background: BackgroundTasks,
) -> ClientRead:
    client = await users.get_client(session, client_id, for_update=True)
    check_if_match(request, client.version)
    updated = await users.update_client(session, client, data, admin)
    reload_keys_after_commit(request, background)
    with_etag(response, updated.version)
    return updated


@router.post("/clients/{client_id}/rotate-secret", response_model=ClientCreated, summary="A new client secret")
async def rotate_client_secret(
    request: Request, session: SessionDep, admin: Admin, client_id: ClientId, background: BackgroundTasks
) -> JSONResponse:
    client = await users.get_client(session, client_id, for_update=True)
    rotated = await users.rotate_client_secret(session, client, admin)
    reload_keys_after_commit(request, background)
    return JSONResponse(rotated.model_dump(mode="json"), headers=NO_STORE)  # the new secret, shown once


@router.delete("/clients/{client_id}", status_code=204, responses=documented(if_match=True))
async def delete_client(
    request: Request, session: SessionDep, admin: Admin, client_id: ClientId, background: BackgroundTasks
) -> Response:
    client = await users.get_client(session, client_id, for_update=True)
    check_if_match(request, client.version)
    await users.delete_client(session, client, admin)
    reload_keys_after_commit(request, background)
    return Response(status_code=204, background=background)


@router.get("/keys", response_model=list[SigningKeyRead])
async def list_keys(session: SessionDep, _: Admin) -> list[SigningKeyRead]:
    return await keys.list_signing_keys(session)


def reload_keys_after_commit(request: Request, background: BackgroundTasks) -> None:
    """This process reloads the keys (and revoked subjects) it verifies with once the change is committed (the
    seam commits before the response is sent; background tasks run after it): its own tokens follow a rotation
    or revocation at once."""
    source: keys.DatabaseKeySource = request.app.state.runtime.extras["keys"]
    background.add_task(source.refresh, fresh=True)


@router.post("/keys/rotate", status_code=201, response_model=SigningKeyRead)
async def rotate_keys(request: Request, session: SessionDep, _: Admin, background: BackgroundTasks) -> SigningKeyRead:
    rotated = await keys.rotate_signing_key(session, get_settings())
    reload_keys_after_commit(request, background)
    return rotated


@router.post("/keys/{kid}/revoke", response_model=list[SigningKeyRead], summary="Emergency revocation of a signing key")
async def revoke_key(
    request: Request, session: SessionDep, admin: Admin, kid: Kid, background: BackgroundTasks
) -> list[SigningKeyRead]:
    remaining = await keys.revoke_signing_key(session, kid, admin)
    reload_keys_after_commit(request, background)
    return remaining
