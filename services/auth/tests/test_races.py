"""Issue #11, finding 10: a refresh racing a revocation of its family. Under READ COMMITTED the revoking UPDATE
does not see a token inserted by a refresh that commits after the UPDATE began, so without serialisation that
token survives a password change (or the reuse of a spent token). Each test holds a refresh open in a transaction
of its own, starts the revocation, waits until it is blocked, then commits the refresh."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
from auth import tokens
from auth.config import get_settings
from fastapi import FastAPI
from itsm_shared.testing import eventually
from sqlalchemy import text

from .conftest import admin_token, bearer, login
from .test_router import PASSWORD, make_user

REFRESH = {"grant_type": "refresh_token"}


async def blocked_on_a_lock(app: FastAPI) -> int:
    async with app.state.sessions() as session:
        result = await session.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock' AND state = 'active'"
            )
        )
        return int(result.scalar_one())


async def race(
    app: FastAPI, refresh_token: str, revocation: Callable[[], Coroutine[Any, Any, httpx.Response]]
) -> tuple[str, httpx.Response]:
    """A refresh with `refresh_token`, committed only once `revocation` is under way and blocked; returns the
    refresh token that refresh issued and the revocation's response."""
    async with app.state.sessions() as racing:
        issued = await tokens.refresh_grant(racing, get_settings(), refresh_token)
        revoking = asyncio.create_task(revocation())
        await eventually(lambda: blocked_on_a_lock(app), lambda n: n >= 1, what="the revocation waits for the refresh")
        assert not revoking.done()
        await racing.commit()
    assert issued.refresh_token
    return issued.refresh_token, await revoking


async def test_a_refresh_racing_a_password_change_leaves_no_live_token(client: httpx.AsyncClient, app: FastAPI) -> None:
    user = await make_user(client, ["agent"])
    first = (await login(client, str(user["username"]), PASSWORD)).json()["refresh_token"]
    admin = await admin_token(client)

    def change_password() -> Coroutine[Any, Any, httpx.Response]:
        return client.patch(
            f"/api/v1/auth/users/{user['id']}", headers=bearer(admin), json={"password": "a brand new password"}
        )

    survivor, changed = await race(app, first, change_password)
    assert changed.status_code == 200
    after = await client.post("/api/v1/auth/token", data={**REFRESH, "refresh_token": survivor})
    assert after.status_code == 400, "a token issued by the racing refresh survived the password change"


async def test_a_refresh_racing_reuse_detection_leaves_no_live_token(client: httpx.AsyncClient, app: FastAPI) -> None:
    user = await make_user(client, ["agent"])
    first = (await login(client, str(user["username"]), PASSWORD)).json()["refresh_token"]
    second = (await client.post("/api/v1/auth/token", data={**REFRESH, "refresh_token": first})).json()

    def reuse_the_spent_token() -> Coroutine[Any, Any, httpx.Response]:
        return client.post("/api/v1/auth/token", data={**REFRESH, "refresh_token": first})

    survivor, reused = await race(app, second["refresh_token"], reuse_the_spent_token)
    assert reused.status_code == 400
    after = await client.post("/api/v1/auth/token", data={**REFRESH, "refresh_token": survivor})
    assert after.status_code == 400, "a token issued by the racing refresh survived the family's revocation"


async def test_a_refresh_racing_revoke_leaves_no_live_token(client: httpx.AsyncClient, app: FastAPI) -> None:
    user = await make_user(client, ["agent"])
    first = (await login(client, str(user["username"]), PASSWORD)).json()["refresh_token"]
    second = (await client.post("/api/v1/auth/token", data={**REFRESH, "refresh_token": first})).json()

    def revoke_the_family() -> Coroutine[Any, Any, httpx.Response]:
        return client.post("/api/v1/auth/revoke", data={"token": first})

    survivor, revoked = await race(app, second["refresh_token"], revoke_the_family)
    assert revoked.status_code == 200
    after = await client.post("/api/v1/auth/token", data={**REFRESH, "refresh_token": survivor})
    assert after.status_code == 400, "a token issued by the racing refresh survived the revocation"
