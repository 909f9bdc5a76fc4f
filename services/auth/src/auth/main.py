from __future__ import annotations

import asyncio
import logging
from typing import Any

from itsm_shared.app import Runtime, ServiceSpec, create_app
from itsm_shared.auth import KeySource
from itsm_shared.db import transaction

from auth import keys, revocations, security, tokens, users
from auth.config import get_settings
from auth.keys import DatabaseKeySource
from auth.router import router, well_known
from auth.schemas import ClientRead, UserRead

log = logging.getLogger(__name__)


async def prepare(rt: Runtime) -> None:
    """Refuses to start without a usable key-encryption key (security.KeyEncryptionError says what to set)."""
    security.reset_key_encryption()
    security.use_hashing_slots(None)
    security.key_encryption()
    async with transaction(rt.sessions) as session:
        await keys.prepare_keys(session)
    password = get_settings().bootstrap_admin_password
    if password:
        async with transaction(rt.sessions) as session:
            await users.bootstrap_admin(session, password.get_secret_value())
    await key_source_of(rt).refresh()


def key_source(rt: Runtime) -> KeySource:
    rt.extras["keys"] = DatabaseKeySource(rt.sessions, refresh_seconds=get_settings().jwks_refresh_seconds)
    return key_source_of(rt)


def key_source_of(rt: Runtime) -> DatabaseKeySource:
    source: DatabaseKeySource = rt.extras["keys"]
    return source


async def upkeep(rt: Runtime) -> None:
    """Every JWKS refresh interval: delete retired keys past their time, revocations no token can still be caught
    by and old failed logins, then reload the keys (and revoked subjects) this process verifies with (a key or
    subject revoked by another replica is refused within the interval here too)."""
    settings = get_settings()
    while True:
        await asyncio.sleep(settings.jwks_refresh_seconds)
        try:
            async with transaction(rt.sessions) as session:
                await keys.purge_retired_keys(session)
                await revocations.purge(session)
                await tokens.forget_old_failures(session, settings)
        except Exception:
            log.exception("auth upkeep failed; retrying next interval")
        await key_source_of(rt).refresh()


app = create_app(
    ServiceSpec(
        name="auth",
        title="ITSM auth service",
        api_prefix="/api/v1/auth",
        routers=[router, well_known],
        settings=get_settings(),
        key_source=key_source,
        on_startup=[prepare],
        background=[upkeep],
        publishes={
            "itsm.auth.user_created": UserRead,
            "itsm.auth.user_updated": UserRead,
            "itsm.auth.user_unlocked": dict[str, Any],
            "itsm.auth.client_created": ClientRead,
            "itsm.auth.client_updated": ClientRead,
            "itsm.auth.client_secret_rotated": ClientRead,
            "itsm.auth.client_deleted": ClientRead,
            "itsm.auth.login_succeeded": dict[str, Any],
            "itsm.auth.login_failed": dict[str, Any],
            "itsm.auth.account_locked": dict[str, Any],
            "itsm.auth.token_revoked": dict[str, Any],
            "itsm.auth.key_revoked": dict[str, Any],
        },
    )
)
