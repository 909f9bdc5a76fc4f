"""Bearer-token verification every service does itself, from the auth service's JWKS.

Algorithms are pinned (EdDSA), `typ` must be an access token, `exp iat iss aud sub jti` are required. Keys are
fetched asynchronously (never blocking the event loop), cached, and refetched on an unknown `kid`, at most
once per `min_refetch_seconds`, so a flood of forged kids cannot become a flood of fetches.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import httpx
import jwt
from fastapi import Depends, Request

from itsm_shared.errors import Forbidden, Unauthorized, Unavailable

ALGORITHMS = ["EdDSA"]
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a JOSE typ, not a secret)
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]
LEEWAY_SECONDS = 30


class Role:
    ADMIN = "admin"
    AGENT = "agent"
    PROBLEM_MANAGER = "problem_manager"
    CHANGE_MANAGER = "change_manager"
    CAB_MEMBER = "cab_member"
    AUDITOR = "auditor"
    REQUESTER = "requester"

    ALL = frozenset({ADMIN, AGENT, PROBLEM_MANAGER, CHANGE_MANAGER, CAB_MEMBER, AUDITOR, REQUESTER})


@dataclass(frozen=True)
class Principal:
    id: uuid.UUID
    roles: frozenset[str]
    kind: str = "user"  # "user" or "client" (a service account from client_credentials)
    name: str | None = None
    token_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def has(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))

    @property
    def actor(self) -> str:
        return str(self.id)


class KeySource(Protocol):
    async def key(self, kid: str) -> jwt.PyJWK: ...


class JWKSCache:
    """Public keys from a JWKS URL, fetched with httpx off the request path's blocking I/O."""

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: float = 300,
        min_refetch_seconds: float = 10,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.ttl = ttl_seconds
        self.min_refetch = min_refetch_seconds
        self._client = client or httpx.AsyncClient(timeout=5.0)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        now = time.monotonic()
        if kid in self._keys and now - self._fetched_at < self.ttl:
            return self._keys[kid]
        async with self._lock:
            if (kid not in self._keys or time.monotonic() - self._fetched_at >= self.ttl) and (
                time.monotonic() - self._fetched_at >= self.min_refetch
            ):
                await self._refresh()
        if kid not in self._keys:
            raise Unauthorized("unknown signing key")
        return self._keys[kid]

    async def _refresh(self) -> None:
        try:
            response = await self._client.get(self.url)
            response.raise_for_status()
            keys = {}
            for jwk in response.json().get("keys", []):
                if jwk.get("kid") and jwk.get("alg", "EdDSA") in ALGORITHMS:
                    keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm="EdDSA")
        except (httpx.HTTPError, ValueError) as exc:
            if not self._keys:
                raise Unavailable("the token issuer's keys cannot be fetched") from exc
            return  # keep serving with the keys we have
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def aclose(self) -> None:
        await self._client.aclose()


class TokenVerifier:
    """Verifies access tokens; a verified token is remembered (by its hash, up to `cache_size` of them) until it
    expires, so a client's next requests with it do not redo the signature check. What the cache serves is
    re-checked against the key source's current keys, so a key that is withdrawn stops its tokens at once."""

    def __init__(self, keys: KeySource, *, issuer: str, audience: str, cache_size: int = 10_000) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.cache_size = cache_size
        self._verified: OrderedDict[bytes, tuple[float, str, Principal]] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        digest = hashlib.blake2b(token.encode(), digest_size=32).digest()
        hit = self._verified.get(digest)
        if hit is not None:
            expires, kid, principal = hit
            if time.time() < expires:
                await self.keys.key(kid)  # the key must still be published
                return principal
            del self._verified[digest]
        principal, kid = await self._verify(token)
        self._verified[digest] = (float(principal.claims["exp"]), kid, principal)
        if len(self._verified) > self.cache_size:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed token") from exc
        if header.get("alg") not in ALGORITHMS:
            raise Unauthorized("token algorithm not accepted")
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise Unauthorized("not an access token")
        if any(h in header for h in ("jku", "jwk", "x5u", "x5c")):
            raise Unauthorized("token names its own key")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized("token has no key id")
        key = await self.keys.key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS, "strict_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("token rejected") from exc
        try:
            subject = uuid.UUID(claims["sub"])
        except (ValueError, TypeError) as exc:
            raise Unauthorized("token subject is not a user id") from exc
        roles = claims.get("roles", [])
        if not isinstance(roles, list):
            raise Unauthorized("token roles malformed")
        principal = Principal(
            id=subject,
            roles=frozenset(r for r in roles if r in Role.ALL),
            kind=str(claims.get("kind", "user")),
            name=claims.get("name"),
            token_id=str(claims["jti"]),
            claims=claims,
        )
        return principal, kid


def bearer_token(request: Request) -> str:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token", error="invalid_request")
    return token.strip()


async def current_principal(request: Request) -> Principal:
    verifier: TokenVerifier = request.app.state.verifier
    return await verifier.verify(bearer_token(request))


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through principals holding any of `roles`, else 403."""

    async def dependency(principal: CurrentPrincipal) -> Principal:
        if not principal.has(*roles):
            raise Forbidden(f"requires one of the roles: {', '.join(sorted(roles))}")
        return principal

    return dependency
