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

from auth import security
from auth.config import SERVICE
from auth.models import ServiceClient, User
from auth.schemas import ClientCreate, ClientCreated, ClientRead, Me, UserCreate, UserRead, UserUpdate
from auth.tokens import revoke_user_families

USER_SORTS = {"created_at": User.created_at, "username": User.username}


def user_view(user: User) -> UserRead:
    locked = user.locked_until is not None and user.locked_until > datetime.now(UTC)
    return UserRead(**user.model_dump(exclude={"password_hash", "failed_logins", "locked_until"}), locked=locked)


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


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
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
        user.failed_logins, user.locked_until = 0, None
        changes["password"] = ["***", "***"]
    if not changes:
        return user_view(user)
    user.version += 1
    user.updated_at = datetime.now(UTC)
    if user.active is False or "roles" in changes or "password" in changes:
        await revoke_user_families(session, user.id)
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
    return user_view(user)


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
    return Page(items=[user_view(u) for u in items], next_cursor=next_cursor)


# ---------------------------------------------------------------- service clients


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
    await outbox.emit(
        session,
        service=SERVICE,
        type="auth.client_created",
        subject=client.id,
        actor=actor.actor,
        sequence=1,
        data={"id": str(client.id), "client_id": client.client_id, "name": client.name, "roles": client.roles},
    )
    return ClientCreated(**ClientRead.model_validate(client, from_attributes=True).model_dump(), client_secret=secret)


async def list_clients(session: AsyncSession) -> list[ClientRead]:
    clients = (await session.exec(select(ServiceClient).order_by(col(ServiceClient.created_at)))).all()
    return [ClientRead.model_validate(c, from_attributes=True) for c in clients]
