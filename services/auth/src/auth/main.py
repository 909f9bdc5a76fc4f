from __future__ import annotations

from typing import Any

from itsm_shared.app import Runtime, ServiceSpec, create_app
from itsm_shared.db import transaction

from auth import keys, users
from auth.config import get_settings
from auth.keys import DatabaseKeySource
from auth.router import router
from auth.schemas import UserRead


async def prepare(rt: Runtime) -> None:
    async with transaction(rt.sessions) as session:
        await keys.ensure_signing_key(session)
    password = get_settings().bootstrap_admin_password
    if password:
        async with transaction(rt.sessions) as session:
            await users.bootstrap_admin(session, password)


app = create_app(
    ServiceSpec(
        name="auth",
        title="ITSM auth service",
        api_prefix="/api/v1/auth",
        routers=[router],
        settings=get_settings(),
        key_source=lambda rt: DatabaseKeySource(rt.sessions),
        on_startup=[prepare],
        publishes={
            "itsm.auth.user_created": UserRead,
            "itsm.auth.user_updated": UserRead,
            "itsm.auth.client_created": dict[str, Any],
            "itsm.auth.login_succeeded": dict[str, Any],
            "itsm.auth.login_failed": dict[str, Any],
            "itsm.auth.account_locked": dict[str, Any],
            "itsm.auth.token_revoked": dict[str, Any],
        },
    )
)
