"""Auth use cases. Each one changes rows and appends its events to the outbox in one transaction."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from itsm_shared import outbox
from itsm_shared.auth import Principal, Role
from itsm_shared.errors import Conflict, NotFound
from itsm_shared.events import SYSTEM_ACTOR, new_event
from itsm_shared.pagination import Sort, keyset, page_of
from sqlalchemy import func, text, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth import security
from auth.config import AuthSettings
from auth.errors import OAuthError, invalid_grant
from auth.models import RefreshToken, ServiceClient, SigningKey, User
from auth.schemas import ClientCreate, TokenResponse, UserCreate, UserRead, UserUpdate

SERVICE = "auth"
USER_FIELDS = ("username", "full_name", "email", "roles", "active")


def now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- events


def user_view(user: User) -> UserRead:
    locked = user.locked_until is not None and user.locked_until > now()
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


# ---------------------------------------------------------------- signing keys


async def ensure_signing_key(session: AsyncSession) -> SigningKey:
    """Generate the first key on first start and keep it; replicas starting together agree on one."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('auth-signing-key'))"))
    key = await signing_key(session)
    if key is None:
        kid, pem, jwk = security.generate_signing_key()
        key = SigningKey(kid=kid, private_pem=pem, public_jwk=jwk)
        session.add(key)
    await session.commit()
    return key


async def signing_key(session: AsyncSession) -> SigningKey | None:
    result = await session.exec(
        select(SigningKey)
        .where(col(SigningKey.retire_at).is_(None))
        .order_by(col(SigningKey.created_at).desc(), col(SigningKey.kid))
        .limit(1)
    )
    return result.first()


async def published_keys(session: AsyncSession) -> list[SigningKey]:
    """Every key a valid token may still name: the signing key and those not yet past their retirement."""
    result = await session.exec(
        select(SigningKey)
        .where(col(SigningKey.retire_at).is_(None) | (col(SigningKey.retire_at) > func.now()))
        .order_by(col(SigningKey.created_at).desc())
    )
    return list(result.all())


async def rotate_signing_key(session: AsyncSession, settings: AuthSettings) -> SigningKey:
    """A new key signs from now on; the old one stays published until every token it signed has expired."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('auth-signing-key'))"))
    retire_at = now() + timedelta(seconds=settings.access_token_ttl_seconds + 60)
    await session.execute(update(SigningKey).where(col(SigningKey.retire_at).is_(None)).values(retire_at=retire_at))
    kid, pem, jwk = security.generate_signing_key()
    key = SigningKey(kid=kid, private_pem=pem, public_jwk=jwk)
    session.add(key)
    await session.commit()
    return key


# ---------------------------------------------------------------- users


async def bootstrap_admin(session: AsyncSession, password: str) -> User | None:
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('auth-bootstrap-admin'))"))
    has_admin = await session.exec(
        select(User.id).where(col(User.roles).contains([Role.ADMIN]), col(User.active)).limit(1)
    )
    if has_admin.first() is not None:
        await session.rollback()
        return None
    existing = (await session.exec(select(User).where(User.username == "admin"))).first()
    if existing is not None:
        # An `admin` user exists but lost its role or was disabled: restore it rather than fail to start.
        existing.roles = sorted({*existing.roles, Role.ADMIN})
        existing.active = True
        existing.password_hash = await security.hash_password(password)
        existing.version += 1
        existing.updated_at = now()
        await outbox.append(session, _user_event("user_updated", existing, SYSTEM_ACTOR))
        await session.commit()
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
    await session.commit()
    return user


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    return user


async def create_user(session: AsyncSession, data: UserCreate, actor: Principal) -> User:
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
    return user


async def update_user(session: AsyncSession, user: User, data: UserUpdate, actor: Principal) -> User:
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
        return user
    user.version += 1
    user.updated_at = now()
    if user.active is False or "roles" in changes or "password" in changes:
        await _revoke_user_families(session, user.id)
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
    await session.commit()
    return user


USER_SORTS = {"created_at": User.created_at, "username": User.username}


async def list_users(
    session: AsyncSession, *, sort: Sort, limit: int, cursor: str | None, role: str | None, active: bool | None
) -> tuple[list[User], str | None]:
    stmt = select(User)
    if role:
        stmt = stmt.where(col(User.roles).contains([role]))
    if active is not None:
        stmt = stmt.where(User.active == active)
    rows = (await session.exec(keyset(stmt, sort, User.id, limit, cursor))).all()
    return page_of(rows, sort, limit, value_of=lambda u: getattr(u, sort.name), id_of=lambda u: u.id)


# ---------------------------------------------------------------- service clients


async def create_client(session: AsyncSession, data: ClientCreate, actor: Principal) -> tuple[ServiceClient, str]:
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
    return client, secret


async def list_clients(session: AsyncSession) -> list[ServiceClient]:
    return list((await session.exec(select(ServiceClient).order_by(col(ServiceClient.created_at)))).all())


# ---------------------------------------------------------------- tokens


async def _access_token(
    session: AsyncSession, settings: AuthSettings, *, subject: uuid.UUID, roles: list[str], kind: str, name: str | None
) -> str:
    key = await signing_key(session)
    if key is None:
        key = await ensure_signing_key(session)
    return security.mint_access_token(
        kid=key.kid,
        private_pem=key.private_pem,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        subject=subject,
        roles=roles,
        kind=kind,
        name=name,
        ttl_seconds=settings.access_token_ttl_seconds,
    )


async def _issue_refresh(
    session: AsyncSession,
    settings: AuthSettings,
    user: User,
    *,
    family_id: uuid.UUID | None = None,
    family_expires_at: datetime | None = None,
) -> str:
    token = security.new_secret()
    issued = now()
    session.add(
        RefreshToken(
            token_hash=security.token_digest(token),
            family_id=family_id or uuid.uuid4(),
            user_id=user.id,
            expires_at=issued + timedelta(seconds=settings.refresh_token_ttl_seconds),
            family_expires_at=family_expires_at or issued + timedelta(seconds=settings.refresh_family_ttl_seconds),
        )
    )
    return token


def _login_event(action: str, user: User | None, username: str, **data: Any) -> dict[str, Any]:
    subject = user.id if user else None
    return new_event(
        service=SERVICE,
        type=f"auth.{action}",
        subject=subject,
        actor=str(user.id) if user else SYSTEM_ACTOR,
        data={"user_id": str(user.id) if user else None, "username": username, **data},
    )


async def password_grant(session: AsyncSession, settings: AuthSettings, username: str, password: str) -> TokenResponse:
    user = (await session.exec(select(User).where(User.username == username).with_for_update())).first()
    valid, upgraded = await security.verify_password(password, user.password_hash if user else None)
    locked = user is not None and user.locked_until is not None and user.locked_until > now()
    if user is None or not valid or locked or not user.active:
        if user is not None and not locked:
            user.failed_logins += 1
            reason = "bad_password" if not valid else "inactive"
            await outbox.append(
                session, _login_event("login_failed", user, username, reason=reason, failed_logins=user.failed_logins)
            )
            if user.failed_logins >= settings.max_failed_logins:
                user.locked_until = now() + timedelta(seconds=settings.lockout_seconds)
                user.failed_logins = 0
                await outbox.append(
                    session, _login_event("account_locked", user, username, locked_until=user.locked_until.isoformat())
                )
            session.add(user)
        else:
            await outbox.append(
                session, _login_event("login_failed", user, username, reason="locked" if locked else "unknown_user")
            )
        await session.commit()
        raise invalid_grant()
    if upgraded:
        user.password_hash = upgraded
    user.failed_logins, user.locked_until = 0, None
    session.add(user)
    refresh = await _issue_refresh(session, settings, user)
    access = await _access_token(session, settings, subject=user.id, roles=user.roles, kind="user", name=user.username)
    await outbox.append(session, _login_event("login_succeeded", user, username, grant="password"))
    await session.commit()
    return TokenResponse(
        access_token=access,
        expires_in=settings.access_token_ttl_seconds,
        refresh_token=refresh,
        scope=" ".join(user.roles),
    )


async def _revoke_user_families(session: AsyncSession, user_id: uuid.UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(col(RefreshToken.user_id) == user_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=now())
    )


async def _revoke_family(session: AsyncSession, family_id: uuid.UUID) -> int:
    result = await session.execute(
        update(RefreshToken)
        .where(col(RefreshToken.family_id) == family_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=now())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def refresh_grant(session: AsyncSession, settings: AuthSettings, token: str) -> TokenResponse:
    row = (
        await session.exec(
            select(RefreshToken).where(RefreshToken.token_hash == security.token_digest(token)).with_for_update()
        )
    ).first()
    if row is None:
        raise invalid_grant()
    if row.used_at is not None or row.revoked_at is not None:
        if row.used_at is not None:
            # A spent token came back: someone holds a copy. End the whole family (ASVS 10.4.5).
            revoked = await _revoke_family(session, row.family_id)
            await outbox.append(
                session,
                new_event(
                    service=SERVICE,
                    type="auth.token_revoked",
                    subject=row.user_id,
                    actor=SYSTEM_ACTOR,
                    data={
                        "user_id": str(row.user_id),
                        "family_id": str(row.family_id),
                        "reason": "refresh_token_reuse",
                        "revoked": revoked,
                    },
                ),
            )
            await session.commit()
        raise invalid_grant()
    current = now()
    user = await session.get(User, row.user_id)
    if row.expires_at <= current or row.family_expires_at <= current or user is None or not user.active:
        raise invalid_grant()
    row.used_at = current
    session.add(row)
    refresh = await _issue_refresh(
        session, settings, user, family_id=row.family_id, family_expires_at=row.family_expires_at
    )
    access = await _access_token(session, settings, subject=user.id, roles=user.roles, kind="user", name=user.username)
    await session.commit()
    return TokenResponse(
        access_token=access,
        expires_in=settings.access_token_ttl_seconds,
        refresh_token=refresh,
        scope=" ".join(user.roles),
    )


async def client_credentials_grant(
    session: AsyncSession, settings: AuthSettings, client_id: str, secret: str
) -> TokenResponse:
    client = (await session.exec(select(ServiceClient).where(ServiceClient.client_id == client_id))).first()
    valid, _ = await security.verify_password(secret, client.secret_hash if client else None)
    if client is None or not valid or not client.active:
        raise OAuthError("invalid_client", "client authentication failed", status=401)
    access = await _access_token(
        session, settings, subject=client.id, roles=client.roles, kind="client", name=client.client_id
    )
    return TokenResponse(
        access_token=access, expires_in=settings.access_token_ttl_seconds, scope=" ".join(client.roles)
    )


async def revoke(session: AsyncSession, token: str) -> None:
    """RFC 7009: revoke the refresh token's family; unknown tokens are not an error."""
    row = (
        await session.exec(
            select(RefreshToken).where(RefreshToken.token_hash == security.token_digest(token)).with_for_update()
        )
    ).first()
    if row is None:
        return
    revoked = await _revoke_family(session, row.family_id)
    if revoked:
        await outbox.append(
            session,
            new_event(
                service=SERVICE,
                type="auth.token_revoked",
                subject=row.user_id,
                actor=str(row.user_id),
                data={
                    "user_id": str(row.user_id),
                    "family_id": str(row.family_id),
                    "reason": "revoked",
                    "revoked": revoked,
                },
            ),
        )
    await session.commit()
