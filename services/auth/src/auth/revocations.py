"""Revoked subjects: a service client disabled, deleted, given a new secret or other roles, or a user disabled,
given other roles or a new password, has its access tokens issued before the change refused by every service.

The change records `not_before` for the subject (a row of its own, so it outlives a deleted client: the tombstone);
the JWKS (keys.jwks) lists every subject whose `not_before` is younger than an access token's lifetime plus a
minute, hashed (itsm_shared.auth.subject_digest), and every service's key set reloads it with the keys, refusing
within one ITSM_JWKS_REFRESH_SECONDS a token whose `iat` is before its subject's `not_before`. Older rows can name
no valid token and are deleted by the upkeep loop.

`not_before` is a whole second, rounded up: a token issued in the second of the change, before it, is refused too;
a token issued after the change in that same second (a client re-enabled at once) is given that `iat`
(tokens._access_token), so it is not caught by the revocation it follows; and a further change of the subject
moves `not_before` at least one second on, so it catches those tokens."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from itsm_shared.auth import subject_digest
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from auth.config import get_settings


def _window_start() -> int:
    """The oldest `not_before` that may still refuse a token: one issued just before it expires after this."""
    return int(time.time()) - get_settings().access_token_ttl_seconds - 60


async def revoke_subject(session: AsyncSession, subject: uuid.UUID, kind: str) -> int:
    """Refuse the subject's access tokens issued until now (the caller holds the subject's row lock, which token
    issuance for it takes too, so no token issued before the change carries a later `iat`)."""
    # A second change within the second of the first must still catch the tokens issued between them, which the
    # first dated at its own `not_before`: so never the same `not_before` twice, always one more.
    result = await session.execute(
        text(
            "INSERT INTO revoked_subject (subject, kind, not_before) VALUES (:subject, :kind, :not_before) "
            "ON CONFLICT (subject) DO UPDATE SET kind = EXCLUDED.kind, "
            "not_before = GREATEST(revoked_subject.not_before + 1, EXCLUDED.not_before) RETURNING not_before"
        ),
        {"subject": subject, "kind": kind, "not_before": math.ceil(time.time())},
    )
    return int(result.scalar_one())


async def not_before(session: AsyncSession, subject: uuid.UUID) -> int | None:
    """The subject's current `not_before`, if its last revocation can still refuse a token."""
    result = await session.execute(
        text("SELECT not_before FROM revoked_subject WHERE subject = :subject AND not_before >= :since"),
        {"subject": subject, "since": _window_start()},
    )
    value = result.scalar_one_or_none()
    return int(value) if value is not None else None


async def published(session: AsyncSession) -> list[dict[str, Any]]:
    """The JWKS's `revoked` member: the subjects' digests, never their ids."""
    result = await session.execute(
        text("SELECT subject, not_before FROM revoked_subject WHERE not_before >= :since ORDER BY not_before"),
        {"since": _window_start()},
    )
    return [{"sub_sha256": subject_digest(str(r.subject)), "not_before": int(r.not_before)} for r in result.all()]


async def purge(session: AsyncSession) -> int:
    """Delete the revocations no valid token can be caught by any more."""
    result = await session.execute(
        text("DELETE FROM revoked_subject WHERE not_before < :since"), {"since": _window_start()}
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
