"""The service's signing keys: the first one made at start, rotation, the published set (JWKS), and reading them
back to verify its own tokens from the database, not over HTTP to itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from itsm_shared.errors import Unauthorized
from sqlalchemy import func, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth import security
from auth.config import AuthSettings
from auth.models import SigningKey
from auth.schemas import SigningKeyRead


async def _lock_keys(session: AsyncSession) -> None:
    # Replicas starting or rotating together take turns, so they agree on one signing key.
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('auth-signing-key'))"))


def _new_key(session: AsyncSession) -> SigningKey:
    kid, pem, jwk = security.generate_signing_key()
    key = SigningKey(kid=kid, private_pem=pem, public_jwk=jwk)
    session.add(key)
    return key


async def ensure_signing_key(session: AsyncSession) -> SigningKey:
    """Generate the first key on first start and keep it."""
    await _lock_keys(session)
    key = await signing_key(session)
    return key if key is not None else _new_key(session)


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


async def jwks(session: AsyncSession) -> dict[str, Any]:
    return {"keys": [k.public_jwk for k in await published_keys(session)]}


async def list_signing_keys(session: AsyncSession) -> list[SigningKeyRead]:
    current = await signing_key(session)
    return [
        SigningKeyRead(
            kid=k.kid,
            created_at=k.created_at,
            retire_at=k.retire_at,
            signing=current is not None and k.kid == current.kid,
        )
        for k in await published_keys(session)
    ]


async def rotate_signing_key(session: AsyncSession, settings: AuthSettings) -> SigningKeyRead:
    """A new key signs from now on; the old one stays published until every token it signed has expired."""
    await _lock_keys(session)
    retire_at = datetime.now(UTC) + timedelta(seconds=settings.access_token_ttl_seconds + 60)
    await session.execute(update(SigningKey).where(col(SigningKey.retire_at).is_(None)).values(retire_at=retire_at))
    key = _new_key(session)
    return SigningKeyRead(kid=key.kid, created_at=key.created_at, retire_at=None, signing=True)


class DatabaseKeySource:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self._keys: dict[str, jwt.PyJWK] = {}

    async def key(self, kid: str) -> jwt.PyJWK:
        if kid not in self._keys:
            async with self.sessions() as session:
                self._keys = {k.kid: jwt.PyJWK(k.public_jwk) for k in await published_keys(session)}
        if kid not in self._keys:
            raise Unauthorized("unknown signing key")
        return self._keys[kid]
