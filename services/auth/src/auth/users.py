"""Accounts: users (the bootstrap admin, admin of users, who am I) and service clients. Each use case changes rows
and appends its events to the outbox; the request's transaction seam (or the startup hook's) commits them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from itsm_shared import outbox
from itsm_shared.auth import Principal, Role
from itsm_shared.errors import Conflict, NotFound
from itsm_shared.events import SYSTEM_ACTOR, new_event
from itsm_shared.pagination import Page, keyset, page_of, parse_sort
from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth import revocations, security, tokens
from auth.config import SERVICE
from auth.models import ServiceClient, User
from auth.schemas import (
    ClientCreate,
    ClientCreated,
    ClientRead,
    ClientUpdate,
    Me,
    UserCreate,
    UserRead,
    UserUpdate,
)

USER_SORTS = {"created_at": User.created_at, "username": User.username}


def user_view(user: User, *, locked: bool = False) -> UserRead:
    return UserRead(**user.model_dump(exclude={"password_hash"}), locked=locked)


async def user_read(session: AsyncSession, user: User) -> UserRead:
    """The user as an admin sees it, `locked` when failed logins currently delay some client address."""
    return user_view(user, locked=bool(await tokens.throttled(session, [user.username])))


def _user_event(action: str, user: User, actor: str, **extra: Any) -> dict[str, Any]:
    return new_event(
        service=SERVICE,
        type=f"auth.{action}",
        subject=user.id,
        data={**user_view(user).model_dump(mode="json"), **extra},
        actor=actor,
        sequence=user.version,
    )


# ---------------------------------------------------------------- users


async def bootstrap_admin(session: AsyncSession, password: str) -> User | None:
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('auth-bootstrap-admin'))"))
    has_admin = await session.exec(
        select(User.id).where(col(User.roles).contains([Role.ADMIN]), col(User.active)).limit(1)
    )
    if has_admin.first() is not None:
        return None
    existing = (await session.exec(select(User).where(User.username == "admin"))).first()
    if existing is not None:
        # An `admin` user exists but lost its role or was disabled: restore it rather than fail to start.
        existing.roles = sorted({*existing.roles, Role.ADMIN})
        existing.active = True
        existing.password_hash = await security.hash_password(password)
        await tokens.clear_failures(session, existing.username)
        existing.version += 1
        existing.updated_at = datetime.now(UTC)
        await outbox.append(session, _user_event("user_updated", existing, SYSTEM_ACTOR))
        return existing
    user = User(
        username="admin",
        full_name="Administrator",
        roles=[Role.ADMIN],
        password_hash=await security.hash_password(password),
    )
    session.add(user)
    await session.flush()
    await session.refresh(user)
    await outbox.append(session, _user_event("user_created", user, SYSTEM_ACTOR))
    return user


async def get_user(session: AsyncSession, user_id: uuid.UUID, *, for_update: bool = False) -> User:
    """The user; `for_update` locks the row until the transaction ends (a write, and the order in which
    revocations and refreshes of the user's tokens take turns: tokens.py)."""
    user = await session.get(User, user_id, with_for_update=for_update or None, populate_existing=for_update)
    if user is None:
        raise NotFound("no such user")
    return user


async def describe_principal(session: AsyncSession, principal: Principal) -> Me:
    """`/me`: a user as stored; a service client as its token names it."""
    if principal.kind == "user":
        user = await get_user(session, principal.id)
        return Me(
            id=user.id,
            kind="user",
            username=user.username,
            full_name=user.full_name,
            email=user.email,
            roles=user.roles,
        )
    return Me(id=principal.id, kind=principal.kind, username=principal.name, roles=sorted(principal.roles))


async def create_user(session: AsyncSession, data: UserCreate, actor: Principal) -> UserRead:
    if (await session.exec(select(User.id).where(User.username == data.username))).first() is not None:
        raise Conflict(f"username {data.username!r} is taken")
    user = User(
        **data.model_dump(exclude={"password"}),
        password_hash=await security.hash_password(data.password),
    )
    session.add(user)
    await session.flush()
    await session.refresh(user)
    await outbox.append(session, _user_event("user_created", user, actor.actor))
    return user_view(user)


async def update_user(session: AsyncSession, user: User, data: UserUpdate, actor: Principal) -> UserRead:
    changes: dict[str, list[Any]] = {}
    for field, value in data.model_dump(exclude_unset=True, exclude={"password"}).items():
        if value is None or getattr(user, field) == value:
            continue
        changes[field] = [getattr(user, field), value]
        setattr(user, field, value)
    if data.password is not None:
        user.password_hash = await security.hash_password(data.password)
        await tokens.clear_failures(session, user.username)
        changes["password"] = ["***", "***"]
    if not changes:
        return await user_read(session, user)
    user.version += 1
    user.updated_at = datetime.now(UTC)
    if user.active is False or "roles" in changes or "password" in changes:
        await tokens.revoke_user_families(session, user.id)  # the user's row is locked: see tokens.py
        await revocations.revoke_subject(session, user.id, "user")  # and its access tokens, everywhere
    session.add(user)
    await outbox.emit(
        session,
        service=SERVICE,
        type="auth.user_updated",
        subject=user.id,
        data=user_view(user).model_dump(mode="json"),
        actor=actor.actor,
        sequence=user.version,
        changes=changes,
    )
    return await user_read(session, user)


async def unlock_user(session: AsyncSession, user: User, actor: Principal) -> UserRead:
    """Clear the failed logins of the account from every address: the next attempt from anywhere is checked."""
    cleared = await tokens.clear_failures(session, user.username)
    if cleared:
        await outbox.emit(
            session,
            service=SERVICE,
            type="auth.user_unlocked",
            subject=user.id,
            actor=actor.actor,
            sequence=user.version,  # an unlock changes no field of the user: its version as it stands
            data={"user_id": str(user.id), "username": user.username, "addresses": cleared},
        )
    return user_view(user, locked=False)


async def list_users(
    session: AsyncSession, *, sort: str, limit: int, cursor: str | None, role: str | None, active: bool | None
) -> Page[UserRead]:
    order = parse_sort(sort, USER_SORTS)
    stmt = select(User)
    if role:
        stmt = stmt.where(col(User.roles).contains([role]))
    if active is not None:
        stmt = stmt.where(User.active == active)
    rows = (await session.exec(keyset(stmt, order, User.id, limit, cursor))).all()
    items, next_cursor = page_of(rows, order, limit, value_of=lambda u: getattr(u, order.name), id_of=lambda u: u.id)
    locked = await tokens.throttled(session, [u.username for u in items]) if items else set()
    return Page(items=[user_view(u, locked=u.username in locked) for u in items], next_cursor=next_cursor)


# ---------------------------------------------------------------- service clients


def client_view(client: ServiceClient) -> ClientRead:
    return ClientRead.model_validate(client, from_attributes=True)


async def _client_event(
    session: AsyncSession, action: str, client: ServiceClient, actor: Principal, **extra: Any
) -> None:
    await outbox.emit(
        session,
        service=SERVICE,
        type=f"auth.{action}",
        subject=client.id,
        actor=actor.actor,
        sequence=client.version,
        data=client_view(client).model_dump(mode="json"),
        **extra,
    )


async def create_client(session: AsyncSession, data: ClientCreate, actor: Principal) -> ClientCreated:
    """The secret is in the answer, once; only its hash is kept."""
    secret = security.new_secret()
    client = ServiceClient(
        client_id=f"svc-{uuid.uuid4().hex[:12]}",
        name=data.name,
        roles=data.roles,
        secret_hash=await security.hash_password(secret),
    )
    session.add(client)
    await session.flush()
    await session.refresh(client)
    await _client_event(session, "client_created", client, actor)
    return ClientCreated(**client_view(client).model_dump(), client_secret=secret)


async def list_clients(session: AsyncSession) -> list[ClientRead]:
    clients = (await session.exec(select(ServiceClient).order_by(col(ServiceClient.created_at)))).all()
    return [client_view(c) for c in clients]


async def get_client(session: AsyncSession, client_id: str, *, for_update: bool = False) -> ServiceClient:
    stmt = select(ServiceClient).where(ServiceClient.client_id == client_id)
    if for_update:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    client = (await session.exec(stmt)).first()
    if client is None:
        raise NotFound("no such client")
    return client


def _touch(client: ServiceClient) -> None:
    client.version += 1
    client.updated_at = datetime.now(UTC)


async def update_client(
    session: AsyncSession, client: ServiceClient, data: ClientUpdate, actor: Principal
) -> ClientRead:
    """Name, roles, `active`. A disabled client gets no new token, and the access tokens it holds, like those of
    a client given other roles, are refused by every service within one JWKS refresh interval (auth.revocations).
    The caller holds the client's row lock."""
    changes: dict[str, list[Any]] = {}
    for field, value in data.model_dump(exclude_unset=True).items():
        if value is None or getattr(client, field) == value:
            continue
        changes[field] = [getattr(client, field), value]
        setattr(client, field, value)
    if not changes:
        return client_view(client)
    _touch(client)
    session.add(client)
    if "roles" in changes or not client.active:
        await revocations.revoke_subject(session, client.id, "client")
    await _client_event(session, "client_updated", client, actor, changes=changes)
    return client_view(client)


async def rotate_client_secret(session: AsyncSession, client: ServiceClient, actor: Principal) -> ClientCreated:
    """A new secret, returned once; the old one stops working now, and the tokens it got are revoked."""
    secret = security.new_secret()
    await revocations.revoke_subject(session, client.id, "client")
    client.secret_hash = await security.hash_password(secret)
    _touch(client)
    session.add(client)
    await _client_event(session, "client_secret_rotated", client, actor)
    return ClientCreated(**client_view(client).model_dump(), client_secret=secret)


async def delete_client(session: AsyncSession, client: ServiceClient, actor: Principal) -> None:
    """The client is gone: its secret no longer authenticates and its access tokens are revoked (the revocation's
    row outlives the client's)."""
    _touch(client)
    await revocations.revoke_subject(session, client.id, "client")
    await _client_event(session, "client_deleted", client, actor)
    await session.delete(client)
