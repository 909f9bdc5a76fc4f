"""Bearer-token verification every service does itself, from the auth service's JWKS.

Algorithms are pinned (EdDSA), `typ` must be an access token, `exp iat iss aud sub jti` are required.

Keys (`RefreshingKeySet`, over HTTP: `JWKSCache`) are reloaded in the background every `refresh_seconds`
(`ITSM_JWKS_REFRESH_SECONDS`), so a key the issuer withdraws (rotated out, or revoked in an emergency) stops
verifying within one interval. A request whose key is known never waits for a fetch, however slow the issuer; an
unknown `kid` asks for a reload at most once per `min_refetch_seconds` (a flood of forged kids is not a flood of
fetches; background reloads do not count, so a key rotated in just after one is fetched at its first token),
joins a reload already under way, and waits for it at most `wait_seconds`. After a failed reload the set keeps
the keys it has and retries with a growing delay (1, 2, 4 ... s, up to the interval); only while it has never
loaded any key is a token refused as 503 (the issuer's fault, not the token's).

Revoked subjects travel in the same document, one reload for both: auth's JWKS carries, beside `keys`, a member
`revoked` (RFC 7517 §5 lets a JWK Set have members a reader ignores) listing `{"sub_sha256", "not_before"}` for every
subject (a service client disabled, deleted, re-keyed or given other roles; a user disabled, re-roled or with a new
password) whose change is younger than an access token's lifetime. `TokenVerifier` refuses a token of such a
subject issued (`iat`) before `not_before`, cached or not, so every service stops a cut-off client's tokens within
one refresh interval, as it stops a revoked key's. The subject is hashed (SHA-256 of `sub`): the public document
names nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Annotated, Any, Protocol, Self, runtime_checkable

import httpx
import jwt
from fastapi import Depends, Request
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlowPassword, OAuthFlows
from fastapi.security import HTTPBearer, OAuth2

from itsm_shared.errors import Forbidden, Unauthorized, Unavailable
from itsm_shared.openapi import secured_by

log = logging.getLogger(__name__)

ALGORITHMS = ["EdDSA"]
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a JOSE typ, not a secret)
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]
LEEWAY_SECONDS = 30
DEFAULT_REFRESH_SECONDS = 60.0
# At most one reload a second for unknown kids: a flood of forged kids costs the issuer one fetch a second per
# process, and a key rotated in is fetched at its first token unless another reload ran within that second.
DEFAULT_MIN_REFETCH_SECONDS = 1.0


class Role:
    ADMIN = "admin"
    AGENT = "agent"
    PROBLEM_MANAGER = "problem_manager"
    CHANGE_MANAGER = "change_manager"
    CAB_MEMBER = "cab_member"
    AUDITOR = "auditor"
    REQUESTER = "requester"
    INTEGRATOR = "integrator"  # manages its own webhook subscriptions

    ALL = frozenset({ADMIN, AGENT, PROBLEM_MANAGER, CHANGE_MANAGER, CAB_MEMBER, AUDITOR, REQUESTER, INTEGRATOR})


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


@runtime_checkable
class RevocationList(Protocol):
    """A key source that also knows revoked subjects (`RefreshingKeySet` does, from the same document)."""

    def not_before(self, subject: str) -> int | None: ...


def subject_digest(subject: str) -> str:
    """How a revoked subject is named in the published document: the SHA-256 hex of the token's `sub`."""
    return hashlib.sha256(subject.encode()).hexdigest()


def parse_revocations(document: Any) -> dict[str, int]:
    """The revoked subjects of a JWKS document (its `revoked` member), `not_before` by subject digest; entries
    that are not well formed are ignored, a later `not_before` for the same subject wins."""
    revoked: dict[str, int] = {}
    entries = document.get("revoked", []) if isinstance(document, dict) else []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        digest, not_before = entry.get("sub_sha256"), entry.get("not_before")
        if isinstance(digest, str) and isinstance(not_before, int) and not isinstance(not_before, bool):
            revoked[digest] = max(not_before, revoked.get(digest, not_before))
    return revoked


def parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """The EdDSA keys of a JWKS document, by kid; anything else in it is ignored."""
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in document.get("keys", []) if isinstance(document, dict) else []:
        if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str) and jwk.get("alg", "EdDSA") in ALGORITHMS:
            keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm="EdDSA")
    return keys


class RefreshingKeySet:
    """Public keys by kid, and revoked subjects, from the JWKS document `load()` returns, reloaded every
    `refresh_seconds` in the background (see the module's docstring). Subclasses give `load`; `autostart` starts
    the background loop on first use (stopped by `aclose`), otherwise the owner calls `refresh()` on its own
    schedule."""

    def __init__(
        self,
        *,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        min_refetch_seconds: float = DEFAULT_MIN_REFETCH_SECONDS,
        wait_seconds: float = 5.0,
        load_timeout_seconds: float = 10.0,
        autostart: bool = True,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.min_refetch = min(min_refetch_seconds, refresh_seconds)
        self.wait_seconds = wait_seconds
        self.load_timeout = load_timeout_seconds
        self.autostart = autostart
        self.loads = 0  # attempts, for metrics and tests
        self.failures = 0  # consecutive failed loads
        self._keys: dict[str, jwt.PyJWK] = {}
        self._revoked: dict[str, int] = {}
        self._loaded = False
        self._attempted_at = -float("inf")  # monotonic time of the last load attempt
        self._asked_at = -float("inf")  # monotonic time of the last reload asked for by an unknown kid
        self._loading: asyncio.Task[bool] | None = None
        self._loop: asyncio.Task[None] | None = None

    async def load(self) -> dict[str, Any]:
        """The issuer's JWKS document (`keys`, and `revoked` when it lists revoked subjects)."""
        raise NotImplementedError

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def not_before(self, subject: str) -> int | None:
        """The time before which the subject's tokens are revoked, if the last document listed it."""
        return self._revoked.get(subject_digest(subject))

    def retry_delay(self) -> float:
        """How long after the last attempt the next one may start: `min_refetch` while loads succeed, then
        1, 2, 4 ... s after consecutive failures, never more than the refresh interval."""
        if self.failures == 0:
            return self.min_refetch
        return float(min(self.refresh_seconds, 2 ** (self.failures - 1)))

    async def key(self, kid: str) -> jwt.PyJWK:
        if self.autostart:
            self.start()
        known = self._keys.get(kid)
        if known is not None:
            return known  # never waits on a reload
        now = time.monotonic()
        # The window counts the reloads unknown kids asked for, not the background ones: a key rotated in just
        # after a background reload is fetched at its first token, not one window later.
        since = now - (self._asked_at if self.failures == 0 else self._attempted_at)
        if self._loading is not None or since >= self.retry_delay():
            self._asked_at = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reload()), timeout=self.wait_seconds)
        known = self._keys.get(kid)
        if known is not None:
            return known
        if not self._loaded:
            raise Unavailable("the token issuer's keys cannot be fetched")
        raise Unauthorized("unknown signing key")

    async def refresh(self, *, fresh: bool = False) -> bool:
        """Reload now, or join the reload under way (`fresh`: one that starts after this call, to see a change
        just committed); whether it succeeded. Never raises for a failed load."""
        if fresh and self._loading is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._loading)
        return await asyncio.shield(self._reload())

    def forget(self, kid: str) -> None:
        """Stop trusting `kid` in this process at once (the next reload confirms it)."""
        self._keys = {k: v for k, v in self._keys.items() if k != kid}

    def _reload(self) -> asyncio.Task[bool]:
        if self._loading is None or self._loading.done():
            self._attempted_at = time.monotonic()
            self._loading = asyncio.get_running_loop().create_task(self._load_once(), name="keys-reload")
        return self._loading

    async def _load_once(self) -> bool:
        self.loads += 1
        try:
            document = await asyncio.wait_for(self.load(), timeout=self.load_timeout)
            keys, revoked = parse_jwks(document), parse_revocations(document)
        except Exception as exc:  # the set stays as it was; the next attempt backs off
            self.failures += 1
            log.warning("signing keys not reloaded (%s failures in a row): %r", self.failures, exc)
            return False
        finally:
            self._attempted_at = time.monotonic()
            self._loading = None
        self._keys, self._revoked, self._loaded, self.failures = keys, revoked, True, 0
        return True

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run(), name="keys-refresh")

    async def _run(self) -> None:
        while True:
            delay = self.refresh_seconds if self.failures == 0 else self.retry_delay()
            await asyncio.sleep(max(0.0, self._attempted_at + delay - time.monotonic()))
            await self.refresh()

    async def aclose(self) -> None:
        tasks = [t for t in (self._loop, self._loading) if t is not None]
        self._loop = self._loading = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class JWKSCache(RefreshingKeySet):
    """The issuer's public keys from its JWKS URL, fetched with httpx (never blocking the event loop)."""

    def __init__(
        self,
        url: str,
        *,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        min_refetch_seconds: float = DEFAULT_MIN_REFETCH_SECONDS,
        wait_seconds: float = 5.0,
        client: httpx.AsyncClient | None = None,
        autostart: bool = True,
    ) -> None:
        super().__init__(
            refresh_seconds=refresh_seconds,
            min_refetch_seconds=min_refetch_seconds,
            wait_seconds=wait_seconds,
            load_timeout_seconds=max(wait_seconds, 5.0),
            autostart=autostart,
        )
        self.url = url
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=5.0)

    async def load(self) -> dict[str, Any]:
        response = await self._client.get(self.url)
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    async def aclose(self) -> None:
        await super().aclose()
        if self._owns_client:
            await self._client.aclose()


class TokenVerifier:
    """Verifies access tokens; a verified token is remembered (by its hash, up to `cache_size` of them) until it
    expires, so a client's next requests with it do not redo the signature check. What the cache serves is
    re-checked against the key source's current keys, so a withdrawn key stops its tokens as soon as the key
    source drops it (for a `JWKSCache`, within one refresh interval), and against the subjects it lists as revoked
    (a token issued before its subject's `not_before` is refused, 401 "token revoked")."""

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
                try:
                    await self.keys.key(kid)  # the key must still be published
                    self._check_not_revoked(principal)  # and its subject not revoked since
                except Unauthorized:
                    self._verified.pop(digest, None)
                    raise
                return principal
            self._verified.pop(digest, None)
        principal, kid = await self._verify(token)
        self._check_not_revoked(principal)
        self._verified[digest] = (float(principal.claims["exp"]), kid, principal)
        if len(self._verified) > self.cache_size:
            self._verified.popitem(last=False)
        return principal

    def _check_not_revoked(self, principal: Principal) -> None:
        if not isinstance(self.keys, RevocationList):
            return
        not_before = self.keys.not_before(str(principal.claims["sub"]))
        if not_before is not None and int(principal.claims["iat"]) < not_before:
            raise Unauthorized("token revoked")

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


# The token endpoint through the gateway (a URL relative to the API's origin, as Swagger UI and clients resolve it).
TOKEN_URL = "/api/v1/auth/token"  # noqa: S105 (a URL, not a secret)

# How a client gets and sends a token, for the OpenAPI documents: every operation that depends on
# `current_principal` lists these two (either will do, `secured_by`), so Swagger UI has an Authorize button and
# generated clients send the token. Neither is called: `current_principal` reads and verifies the header.
OAUTH2 = OAuth2(
    flows=OAuthFlows(
        password=OAuthFlowPassword(tokenUrl=TOKEN_URL, refreshUrl=TOKEN_URL),
        clientCredentials=OAuthFlowClientCredentials(tokenUrl=TOKEN_URL),
    ),
    scheme_name="oauth2",
    description="A user logs in with the password grant, a service client with client_credentials; either way the "
    "access token is sent as `Authorization: Bearer <token>`. Roles come with the token, not as OAuth2 scopes.",
    auto_error=False,
)
BEARER = HTTPBearer(
    bearerFormat="JWT",
    scheme_name="bearer",
    description="An access token from `POST /api/v1/auth/token` (EdDSA-signed JWT, `typ` at+jwt).",
    auto_error=False,
)


@secured_by(OAUTH2, BEARER)
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
