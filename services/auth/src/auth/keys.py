"""The service's signing keys: prepared at start (encrypted at rest, the first one made), rotation, emergency
revocation, deletion once retired, the published set (JWKS), and reading them back to verify its own tokens from
the database (not over HTTP to itself), reloaded on the same interval as every other service's JWKS cache."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from itsm_shared import outbox
from itsm_shared.auth import Principal, RefreshingKeySet
from itsm_shared.errors import NotFound
from sqlalchemy import delete, func, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from auth import revocations, security
from auth.config import SERVICE, AuthSettings
from auth.models import SigningKey
from auth.schemas import SigningKeyRead

log = logging.getLogger(__name__)


async def _lock_keys(session: AsyncSession) -> None:
    # Replicas starting, rotating or revoking together take turns, so they agree on one signing key.
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('auth-signing-key'))"))


def _new_key(session: AsyncSession) -> SigningKey:
    kid, pem, jwk = security.generate_signing_key()
    key = SigningKey(kid=kid, private_key_encrypted=security.key_encryption().encrypt(kid, pem), public_jwk=jwk)
    session.add(key)
    return key


def private_pem(key: SigningKey) -> str:
    """The key's private half, decrypted with the KEK (a row from before encryption at rest is read as stored
    until the start-up encrypts it)."""
    if key.private_key_encrypted is not None:
        return security.key_encryption().decrypt(key.kid, key.private_key_encrypted)
    if key.private_pem is not None:
        return key.private_pem
    raise security.KeyEncryptionError(f"signing key {key.kid} has no private part")


async def prepare_keys(session: AsyncSession) -> SigningKey:
    """At start: delete retired keys past their time; encrypt any key still stored in clear (rows written before
    encryption at rest) and re-encrypt keys under a previous KEK with the current one; make the first key; and
    check that the signing key decrypts, so a wrong or missing KEK stops the start with a clear error."""
    encryption = security.key_encryption()
    await _lock_keys(session)
    await purge_retired_keys(session)
    signing = await signing_key(session)
    for key in (await session.exec(select(SigningKey))).all():
        if key.private_pem is not None:
            key.private_key_encrypted, key.private_pem = encryption.encrypt(key.kid, key.private_pem), None
            log.warning("signing key %s was stored in clear: encrypted under KEK %s", key.kid, encryption.id)
        elif key.private_key_encrypted is not None and not encryption.encrypted_under_current(
            key.private_key_encrypted
        ):
            try:
                pem = encryption.decrypt(key.kid, key.private_key_encrypted)
            except security.KeyEncryptionError:
                if signing is not None and key.kid == signing.kid:
                    raise
                log.warning("retired signing key %s is under a KEK not given; it is deleted at retirement", key.kid)
                continue
            key.private_key_encrypted = encryption.encrypt(key.kid, pem)
        session.add(key)
    if signing is None:
        signing = _new_key(session)
    private_pem(signing)  # raises KeyEncryptionError when the KEK cannot read it
    return signing


async def signing_key(session: AsyncSession) -> SigningKey | None:
    result = await session.exec(
        select(SigningKey)
        .where(col(SigningKey.retire_at).is_(None))
        .order_by(col(SigningKey.created_at).desc(), col(SigningKey.kid))
        .limit(1)
    )
    return result.first()


async def current_signing_key(session: AsyncSession) -> SigningKey:
    key = await signing_key(session)
    if key is not None:
        return key
    await _lock_keys(session)  # every key was revoked or retired meanwhile: make one (once, across replicas)
    return await signing_key(session) or _new_key(session)


async def published_keys(session: AsyncSession) -> list[SigningKey]:
    """Every key a valid token may still name: the signing key and those not yet past their retirement."""
    result = await session.exec(
        select(SigningKey)
        .where(col(SigningKey.retire_at).is_(None) | (col(SigningKey.retire_at) > func.now()))
        .order_by(col(SigningKey.created_at).desc())
    )
    return list(result.all())


async def jwks(session: AsyncSession) -> dict[str, Any]:
    """The published keys and, beside them, the revoked subjects (auth.revocations) every service reloads with
    them."""
    return {
        "keys": [k.public_jwk for k in await published_keys(session)],
        "revoked": await revocations.published(session),
    }


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
    """A new key signs from now on; the old one stays published until every token it signed has expired (its
    access-token lifetime plus a minute), then its row, private half included, is deleted."""
    await _lock_keys(session)
    await purge_retired_keys(session)
    retire_at = datetime.now(UTC) + timedelta(seconds=settings.access_token_ttl_seconds + 60)
    await session.execute(update(SigningKey).where(col(SigningKey.retire_at).is_(None)).values(retire_at=retire_at))
    key = _new_key(session)
    return SigningKeyRead(kid=key.kid, created_at=key.created_at, retire_at=None, signing=True)


async def revoke_signing_key(session: AsyncSession, kid: str, actor: Principal) -> list[SigningKeyRead]:
    """Emergency revocation (a key is suspected compromised): the key leaves the JWKS now and its row, private half
    included, is deleted; if it was signing, a new key signs from now on. Every service stops accepting its tokens
    within one JWKS refresh interval (ITSM_JWKS_REFRESH_SECONDS); this service at once."""
    await _lock_keys(session)
    key = await session.get(SigningKey, kid)
    if key is None:
        raise NotFound(f"no signing key {kid!r}")
    was_signing = key.retire_at is None
    await session.delete(key)
    await session.flush()
    replacement = _new_key(session) if was_signing and await signing_key(session) is None else None
    await outbox.emit(
        session,
        service=SERVICE,
        type="auth.key_revoked",
        subject=kid,
        actor=actor.actor,
        sequence=1,  # a key has no version; its revocation, after which it is gone, is the one event about it
        data={"kid": kid, "was_signing": was_signing, "replaced_by": replacement.kid if replacement else None},
    )
    await session.flush()
    return await list_signing_keys(session)


async def purge_retired_keys(session: AsyncSession) -> int:
    """Delete the keys past their retirement: no token they signed can still be valid."""
    result = await session.execute(delete(SigningKey).where(col(SigningKey.retire_at) <= func.now()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class DatabaseKeySource(RefreshingKeySet):
    """The published keys (and revoked subjects) as the JWKS shows them, read from the database; reloaded by the
    service's upkeep loop every ITSM_JWKS_REFRESH_SECONDS (and on an unknown kid), like every other service's
    JWKSCache."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, refresh_seconds: float) -> None:
        super().__init__(refresh_seconds=refresh_seconds, min_refetch_seconds=1.0, autostart=False)
        self.sessions = sessions

    async def load(self) -> dict[str, Any]:
        async with self.sessions() as session:
            return await jwks(session)
