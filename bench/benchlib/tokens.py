"""Tokens: an `agent` user created through the auth API and logged in with the password grant."""

from __future__ import annotations

import secrets
from typing import Any


async def password_token(client: Any, username: str, password: str) -> str:
    response = await client.post(
        "/api/v1/auth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


async def agent_token(base_url: str, admin_password: str, username: str = "bench-agent") -> tuple[str, str]:
    """An `agent` user created through the auth API (as an admin would), logged in with the password grant.
    `base_url`: the gateway, or the auth service's own port (no login rate limit there). Returns (access
    token, password)."""
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        admin = await password_token(client, "admin", admin_password)
        password = secrets.token_urlsafe(18)
        response = await client.post(
            "/api/v1/auth/users",
            json={"username": username, "password": password, "full_name": "Bench Agent", "roles": ["agent"]},
            headers={"Authorization": f"Bearer {admin}"},
        )
        response.raise_for_status()
        return await password_token(client, username, password), password
