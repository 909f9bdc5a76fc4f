"""OAuth2 grants (RFC 6749), refresh-token rotation and revocation (RFC 7009), access tokens. Each use case changes
rows and appends its events to the outbox; the request's transaction seam commits them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from itsm_shared import outbox
from itsm_shared.events import SYSTEM_ACTOR, new_event
from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth import keys, security
from auth.config import SERVICE, AuthSettings
from auth.errors import OAuthError, invalid_grant, invalid_request
from auth.models import RefreshToken, ServiceClient, User
from auth.schemas import TokenRequest, TokenResponse


def _required(value: str | None, name: str) -> str:
    if not value:
        raise invalid_request(name)
    return value


async def issue_token(session: AsyncSession, settings: AuthSettings, form: TokenRequest) -> TokenResponse:
    """The token endpoint: the grant the form names, with the parameters that grant requires."""
    if form.grant_type == "password":
        return await password_grant(
            session, settings, _required(form.username, "username"), _required(form.password, "password")
        )
    if form.grant_type == "refresh_token":
        return await refresh_grant(session, settings, _required(form.refresh_token, "refresh_token"))
    if form.grant_type == "client_credentials":
        return await client_credentials_grant(
            session, settings, _required(form.client_id, "client_id"), _required(form.client_secret, "client_secret")
        )
    raise OAuthError("unsupported_grant_type", f"grant_type {form.grant_type!r} is not supported")


async def _access_token(
    session: AsyncSession, settings: AuthSettings, *, subject: uuid.UUID, roles: list[str], kind: str, name: str | None
) -> str:
    key = await keys.signing_key(session)
    if key is None:
        key = await keys.ensure_signing_key(session)
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
    issued = datetime.now(UTC)
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
    current = datetime.now(UTC)
    locked = user is not None and user.locked_until is not None and user.locked_until > current
    if user is None or not valid or locked or not user.active:
        if user is not None and not locked:
            user.failed_logins += 1
            reason = "bad_password" if not valid else "inactive"
            await outbox.append(
                session, _login_event("login_failed", user, username, reason=reason, failed_logins=user.failed_logins)
            )
            if user.failed_logins >= settings.max_failed_logins:
                user.locked_until = current + timedelta(seconds=settings.lockout_seconds)
                user.failed_logins = 0
                await outbox.append(
                    session, _login_event("account_locked", user, username, locked_until=user.locked_until.isoformat())
                )
            session.add(user)
        else:
            await outbox.append(
                session, _login_event("login_failed", user, username, reason="locked" if locked else "unknown_user")
            )
        raise invalid_grant(keeps_writes=True)  # the count, the lock and the events stand
    if upgraded:
        user.password_hash = upgraded
    user.failed_logins, user.locked_until = 0, None
    session.add(user)
    refresh = await _issue_refresh(session, settings, user)
    access = await _access_token(session, settings, subject=user.id, roles=user.roles, kind="user", name=user.username)
    await outbox.append(session, _login_event("login_succeeded", user, username, grant="password"))
    return TokenResponse(
        access_token=access,
        expires_in=settings.access_token_ttl_seconds,
        refresh_token=refresh,
        scope=" ".join(user.roles),
    )


async def revoke_user_families(session: AsyncSession, user_id: uuid.UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(col(RefreshToken.user_id) == user_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=datetime.now(UTC))
    )


async def _revoke_family(session: AsyncSession, family_id: uuid.UUID) -> int:
    result = await session.execute(
        update(RefreshToken)
        .where(col(RefreshToken.family_id) == family_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def _refresh_token_row(session: AsyncSession, token: str) -> RefreshToken | None:
    result = await session.exec(
        select(RefreshToken).where(RefreshToken.token_hash == security.token_digest(token)).with_for_update()
    )
    return result.first()


def _revoked_event(row: RefreshToken, *, actor: str, reason: str, revoked: int) -> dict[str, Any]:
    return new_event(
        service=SERVICE,
        type="auth.token_revoked",
        subject=row.user_id,
        actor=actor,
        data={"user_id": str(row.user_id), "family_id": str(row.family_id), "reason": reason, "revoked": revoked},
    )


async def refresh_grant(session: AsyncSession, settings: AuthSettings, token: str) -> TokenResponse:
    row = await _refresh_token_row(session, token)
    if row is None:
        raise invalid_grant()
    if row.used_at is not None:
        # A spent token came back: someone holds a copy. End the whole family (ASVS 10.4.5), and keep it ended.
        revoked = await _revoke_family(session, row.family_id)
        await outbox.append(
            session, _revoked_event(row, actor=SYSTEM_ACTOR, reason="refresh_token_reuse", revoked=revoked)
        )
        raise invalid_grant(keeps_writes=True)
    if row.revoked_at is not None:
        raise invalid_grant()
    current = datetime.now(UTC)
    user = await session.get(User, row.user_id)
    if row.expires_at <= current or row.family_expires_at <= current or user is None or not user.active:
        raise invalid_grant()
    row.used_at = current
    session.add(row)
    refresh = await _issue_refresh(
        session, settings, user, family_id=row.family_id, family_expires_at=row.family_expires_at
    )
    access = await _access_token(session, settings, subject=user.id, roles=user.roles, kind="user", name=user.username)
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
    row = await _refresh_token_row(session, token)
    if row is None:
        return
    revoked = await _revoke_family(session, row.family_id)
    if revoked:
        await outbox.append(session, _revoked_event(row, actor=str(row.user_id), reason="revoked", revoked=revoked))
