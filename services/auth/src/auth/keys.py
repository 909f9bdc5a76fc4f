"""The auth service verifies its own tokens from its database, not over HTTP to itself."""

from __future__ import annotations

import jwt
from itsm_shared.errors import Unauthorized
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from auth import service


class DatabaseKeySource:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self._keys: dict[str, jwt.PyJWK] = {}

    async def key(self, kid: str) -> jwt.PyJWK:
        if kid not in self._keys:
            async with self.sessions() as session:
                self._keys = {k.kid: jwt.PyJWK(k.public_jwk) for k in await service.published_keys(session)}
        if kid not in self._keys:
            raise Unauthorized("unknown signing key")
        return self._keys[kid]
