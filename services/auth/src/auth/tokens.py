"""OAuth2 grants (RFC 6749), login throttling, refresh-token rotation and revocation (RFC 7009), access tokens.
Each use case changes rows and appends its events to the outbox; the request's transaction seam commits them.

Login throttling (CONTRACT §3): failures are counted per account name and client address. After
`max_failed_logins` in a row from one address, that address waits `login_delay_seconds`, doubled by each further
failure up to `login_max_delay_seconds`, before an attempt for that account is even checked; the owner from another
address is not affected; a success from the address, an admin's unlock or a new password clears it. Names that are
no account are throttled the same way (by their keyed hash), so the throttling itself tells nobody which exist.

Locks: no row lock is held while a password is hashed. A user's row is locked only briefly, after the check: by a
successful login, and by a refresh or revocation of the user's refresh tokens, which every change that revokes them
(password, roles, disabling: users.update_user) also takes first. So a refresh and a revocation take turns, and the
one that comes second sees what the first wrote (READ COMMITTED would otherwise let a token issued by a concurrent
refresh survive the revocation of its family)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from itsm_shared import outbox
from itsm_shared.events import SYSTEM_ACTOR, new_event
from sqlalchemy import delete, text, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth import keys, revocations, security
from auth.config import SERVICE, AuthSettings
from auth.errors import OAuthError, invalid_client, invalid_grant, invalid_request
from auth.models import LoginThrottle, RefreshToken, ServiceClient, User
from auth.schemas import MAX_CLIENT_ID, MAX_SECRET, TokenRequest, TokenResponse

GRANT_TYPES = ("password", "refresh_token", "client_credentials")
# RFC 7591 names; `none`: the password and refresh grants of public clients, which do not authenticate.
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")


def _required(value: str | None, name: str) -> str:
    if not value:
        raise invalid_request(name)
    return value


async def issue_token(
    session: AsyncSession, settings: AuthSettings, form: TokenRequest, client_address: str
) -> TokenResponse:
    """The token endpoint: the grant the form names, with the parameters that grant requires. Client credentials
    (HTTP Basic or the form) are taken first; only the client_credentials grant is open to service clients."""
    credentials = client_credentials(form)
    if form.grant_type not in GRANT_TYPES:
        raise OAuthError("unsupported_grant_type", f"grant_type {form.grant_type!r} is not supported")
    if form.grant_type == "client_credentials":
        if credentials is None:
            raise invalid_client("client authentication required: HTTP Basic, or client_id and client_secret")
        return await client_credentials_grant(session, settings, *credentials)
    if credentials is not None:
        # Users' grants are for public clients: a refresh token is not bound to a client (RFC 6749 §6 would want
        # it bound to one that authenticated), and service clients are registered for client_credentials only.
        await authenticate_client(session, *credentials)
        raise OAuthError("unauthorized_client", f"this client may not use the {form.grant_type} grant")
    if form.grant_type == "password":
        username, password = _required(form.username, "username"), _required(form.password, "password")
        return await password_grant(session, settings, username, password, client_address)
    return await refresh_grant(session, settings, _required(form.refresh_token, "refresh_token"))


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1 (client_secret_basic): `Basic base64(urlencode(client_id) ":" urlencode(secret))`. None
    without the header; a header that is not Basic, or not decodable, fails client authentication."""
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise invalid_client("unsupported client authentication: use HTTP Basic, or the form (client_secret_post)")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise invalid_client("malformed HTTP Basic credentials") from exc
    raw_id, colon, raw_secret = decoded.partition(":")
    if not colon:
        raise invalid_client("malformed HTTP Basic credentials: no colon")
    client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
    if len(client_id) > MAX_CLIENT_ID or len(secret) > MAX_SECRET:
        raise invalid_client("malformed HTTP Basic credentials: too long")
    return client_id, secret


def client_credentials(form: TokenRequest) -> tuple[str, str] | None:
    """The (client_id, secret) the client authenticates with, by HTTP Basic or in the form, else None: a public
    client. One method per request (RFC 6749 §2.3). An empty user-id or password in the Basic header is no
    authentication (Swagger UI sends `Basic Og==`, an empty pair, with a password grant); a client_id without a
    secret only names a client."""
    basic = basic_credentials(form.authorization)
    body_id, body_secret = form.client_id or None, form.client_secret or None
    if body_secret is not None and body_id is None:
        raise invalid_request("client_id")
    if basic is None or not basic[0] or not basic[1]:
        return (body_id, body_secret) if body_id is not None and body_secret is not None else None
    if body_secret is not None:
        raise OAuthError("invalid_request", "client credentials in both the Authorization header and the form")
    if body_id is not None and body_id != basic[0]:
        raise OAuthError("invalid_request", "client_id differs from the client of the Authorization header")
    return basic


def client_address(forwarded_for: str | None, peer: str | None, depth: int) -> str:
    """The client's address as the gateway reports it: the `depth`-th X-Forwarded-For entry from the right
    (Traefik replaces whatever a client sends, so entry 1 is the TCP peer it saw), else the TCP peer. IPv6
    addresses count per /64, the block one subscriber usually holds."""
    entries = [e.strip() for e in (forwarded_for or "").split(",") if e.strip()]
    raw = entries[-depth] if len(entries) >= depth else (entries[0] if entries else (peer or "unknown"))
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return raw[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


async def _access_token(
    session: AsyncSession, settings: AuthSettings, *, subject: uuid.UUID, roles: list[str], kind: str, name: str | None
) -> str:
    key = await keys.current_signing_key(session)
    # Not before the subject's last revocation (auth.revocations): a client re-enabled within the second it was
    # disabled in gets a token its revocation does not refuse.
    issued_at = max(int(time.time()), await revocations.not_before(session, subject) or 0)
    return security.mint_access_token(
        kid=key.kid,
        private_pem=keys.private_pem(key),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        subject=subject,
        roles=roles,
        kind=kind,
        name=name,
        ttl_seconds=settings.access_token_ttl_seconds,
        issued_at=issued_at,
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


def _login_event(action: str, user: User | None, account_key: str, address: str, **data: Any) -> dict[str, Any]:
    """A login event about the user: `sequence` is the user's version when it happened (a login changes no field of
    the user, so it repeats that version). A name that is no account is recorded only as its keyed hash, which is
    then the subject, at version 0 (no account): it may be a password typed in the wrong box."""
    who = {"user_id": str(user.id), "username": user.username} if user else {"user_id": None, "username": None}
    return new_event(
        service=SERVICE,
        type=f"auth.{action}",
        subject=user.id if user else account_key,
        actor=str(user.id) if user else SYSTEM_ACTOR,
        sequence=user.version if user else 0,
        data={**who, "username_hmac": account_key, "client_address": address, **data},
    )


# ---------------------------------------------------------------- login throttling

# The wait counts from the failure (clock_timestamp), not from the start of its transaction (now()), which began
# before the password was hashed.
RECORD_FAILURE = text(
    """
    INSERT INTO login_throttle AS t (account_key, client_address, failures, blocked_until, last_failure_at)
    VALUES (:account, :address, 1,
            CASE WHEN :limit <= 1 THEN clock_timestamp() + make_interval(secs => :base) END, clock_timestamp())
    ON CONFLICT (account_key, client_address) DO UPDATE SET
        failures = t.failures + 1,
        last_failure_at = clock_timestamp(),
        blocked_until = CASE WHEN t.failures + 1 >= :limit THEN clock_timestamp() + make_interval(
            secs => least(CAST(:cap AS double precision), :base * power(2, t.failures + 1 - :limit))) END
    RETURNING failures, blocked_until
    """
)


async def _record_failure(
    session: AsyncSession, settings: AuthSettings, account_key: str, address: str
) -> tuple[int, datetime | None]:
    """One more failure of the account from the address, in one statement (the row is locked only by it)."""
    row = (
        await session.execute(
            RECORD_FAILURE,
            {
                "account": account_key,
                "address": address,
                "limit": settings.max_failed_logins,
                "base": float(settings.login_delay_seconds),
                "cap": float(settings.login_max_delay_seconds),
            },
        )
    ).one()
    return int(row.failures), row.blocked_until


async def clear_failures(session: AsyncSession, username: str) -> int:
    """An admin's unlock, or a new password: every address may try this account again at once."""
    result = await session.execute(
        delete(LoginThrottle).where(col(LoginThrottle.account_key) == security.username_key(username))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def throttled(session: AsyncSession, usernames: list[str]) -> set[str]:
    """Which of these accounts some client address must currently wait for."""
    by_key = {security.username_key(name): name for name in usernames}
    result = await session.exec(
        select(LoginThrottle.account_key).where(
            col(LoginThrottle.account_key).in_(by_key), col(LoginThrottle.blocked_until) > datetime.now(UTC)
        )
    )
    return {by_key[key] for key in result.all()}


async def forget_old_failures(session: AsyncSession, settings: AuthSettings) -> int:
    """Failures older than `login_failure_memory_seconds` that delay nobody any more are forgotten."""
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.login_failure_memory_seconds)
    result = await session.execute(
        delete(LoginThrottle).where(
            col(LoginThrottle.last_failure_at) < cutoff,
            col(LoginThrottle.blocked_until).is_(None) | (col(LoginThrottle.blocked_until) < datetime.now(UTC)),
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- grants


async def _lock_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The user's row, re-read and locked (FOR NO KEY UPDATE) until the transaction ends."""
    result = await session.exec(
        select(User).where(User.id == user_id).with_for_update(key_share=True).execution_options(populate_existing=True)
    )
    return result.first()


async def password_grant(
    session: AsyncSession, settings: AuthSettings, username: str, password: str, address: str
) -> TokenResponse:
    account_key = security.username_key(username)
    throttle = await session.get(LoginThrottle, (account_key, address))
    if throttle is not None and throttle.blocked_until is not None and throttle.blocked_until > datetime.now(UTC):
        raise invalid_grant()  # this address waits: the password is not even checked, nothing is recorded
    user = (await session.exec(select(User).where(User.username == username))).first()  # no lock while hashing
    checked_hash = user.password_hash if user else None
    valid, upgraded = await security.verify_password(password, checked_hash)
    if user is None or not valid or not user.active:
        failures, blocked_until = await _record_failure(session, settings, account_key, address)
        reason = "unknown_user" if user is None else "bad_password" if not valid else "inactive"
        await outbox.append(
            session, _login_event("login_failed", user, account_key, address, reason=reason, failures=failures)
        )
        if user is not None and failures == settings.max_failed_logins and blocked_until is not None:
            # Throttling starts for this account from this address (the event keeps its contract name).
            await outbox.append(
                session,
                _login_event(
                    "account_locked", user, account_key, address, failures=failures, until=blocked_until.isoformat()
                ),
            )
        raise invalid_grant(keeps_writes=True)  # the count and the events stand
    # Checked: now lock the row briefly, and refuse if the password or the account changed during the check.
    current = await _lock_user(session, user.id)
    if current is None or not current.active or current.password_hash != checked_hash:
        raise invalid_grant()
    if throttle is not None:
        await session.execute(
            delete(LoginThrottle).where(
                col(LoginThrottle.account_key) == account_key, col(LoginThrottle.client_address) == address
            )
        )
    if upgraded:
        current.password_hash = upgraded
        session.add(current)
    refresh = await _issue_refresh(session, settings, current)
    access = await _access_token(
        session, settings, subject=current.id, roles=current.roles, kind="user", name=current.username
    )
    await outbox.append(session, _login_event("login_succeeded", current, account_key, address, grant="password"))
    return TokenResponse(
        access_token=access,
        expires_in=settings.access_token_ttl_seconds,
        refresh_token=refresh,
        scope=" ".join(current.roles),
    )


async def revoke_user_families(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Revoke every refresh token of the user. The caller holds the user's row lock (users.update_user loads it
    FOR UPDATE), so a concurrent refresh has either committed its new token, which this statement then sees, or
    waits and then finds its token revoked."""
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


async def _refresh_token_row(session: AsyncSession, token: str) -> tuple[RefreshToken, User | None] | None:
    """The token's row and its user, both locked: the user first (the order every revocation takes), then the
    token re-read under that lock."""
    digest = security.token_digest(token)
    found = (await session.exec(select(RefreshToken.user_id).where(RefreshToken.token_hash == digest))).first()
    if found is None:
        return None
    user = await _lock_user(session, found)
    row = (
        await session.exec(
            select(RefreshToken)
            .where(RefreshToken.token_hash == digest)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()
    return (row, user) if row is not None else None


def _revoked_event(row: RefreshToken, user: User | None, *, actor: str, reason: str, revoked: int) -> dict[str, Any]:
    """About the user whose tokens they were, at the user's version (the user's row is locked: tokens.py)."""
    return new_event(
        service=SERVICE,
        type="auth.token_revoked",
        subject=row.user_id,
        actor=actor,
        sequence=user.version if user is not None else 0,
        data={"user_id": str(row.user_id), "family_id": str(row.family_id), "reason": reason, "revoked": revoked},
    )


async def refresh_grant(session: AsyncSession, settings: AuthSettings, token: str) -> TokenResponse:
    found = await _refresh_token_row(session, token)
    if found is None:
        raise invalid_grant()
    row, user = found
    if row.used_at is not None:
        # A spent token came back: someone holds a copy. End the whole family (ASVS 10.4.5), and keep it ended.
        revoked = await _revoke_family(session, row.family_id)
        await outbox.append(
            session, _revoked_event(row, user, actor=SYSTEM_ACTOR, reason="refresh_token_reuse", revoked=revoked)
        )
        raise invalid_grant(keeps_writes=True)
    if row.revoked_at is not None:
        raise invalid_grant()
    current = datetime.now(UTC)
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


async def authenticate_client(session: AsyncSession, client_id: str, secret: str) -> ServiceClient:
    """The active service client whose secret this is; else 401 invalid_client (unknown, wrong or disabled alike)."""
    # FOR SHARE: an admin's change of the client (which locks it FOR UPDATE, then revokes its tokens) waits for
    # this token to be issued, and a request after it sees the change.
    stmt = select(ServiceClient).where(ServiceClient.client_id == client_id).with_for_update(read=True)
    client = (await session.exec(stmt.execution_options(populate_existing=True))).first()
    valid, _ = await security.verify_password(secret, client.secret_hash if client else None)
    if client is None or not valid or not client.active:
        raise invalid_client()
    return client


async def client_credentials_grant(
    session: AsyncSession, settings: AuthSettings, client_id: str, secret: str
) -> TokenResponse:
    client = await authenticate_client(session, client_id, secret)
    access = await _access_token(
        session, settings, subject=client.id, roles=client.roles, kind="client", name=client.client_id
    )
    return TokenResponse(
        access_token=access, expires_in=settings.access_token_ttl_seconds, scope=" ".join(client.roles)
    )


async def revoke(session: AsyncSession, token: str) -> None:
    """RFC 7009: revoke the refresh token's family; unknown tokens are not an error."""
    found = await _refresh_token_row(session, token)
    if found is None:
        return
    row, user = found
    revoked = await _revoke_family(session, row.family_id)
    if revoked:
        await outbox.append(
            session, _revoked_event(row, user, actor=str(row.user_id), reason="revoked", revoked=revoked)
        )
