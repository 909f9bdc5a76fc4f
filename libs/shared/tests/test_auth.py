"""Bearer-token verification against a JWKS served over (mock) HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, FastAPI
from itsm_shared.auth import (
    CurrentPrincipal,
    JWKSCache,
    Principal,
    Role,
    TokenVerifier,
    require_roles,
    subject_digest,
)
from itsm_shared.errors import DomainError, Unauthorized, Unavailable, install_error_handlers

JWKS_URL = "https://auth.test/api/v1/auth/jwks.json"
ISSUER, AUDIENCE = "itsm-auth", "itsm"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass
class SigningKey:
    kid: str
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64(self.public_raw),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }


class JWKSServer:
    """The issuer's JWKS endpoint, counting fetches."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.revoked: list[dict[str, Any]] = []  # the `revoked` member: subjects' digests and not_before
        self.fetches = 0
        self.down = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == JWKS_URL
        self.fetches += 1
        if self.down:
            return httpx.Response(503)
        return httpx.Response(200, json={"keys": [k.jwk() for k in self.keys], "revoked": self.revoked})


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        "roles": [Role.AGENT, "superuser"],
        "name": "alice",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: SigningKey, payload: dict[str, Any], **header: Any) -> str:
    headers = {"typ": "at+jwt", "kid": key.kid, **header}
    return jwt.encode(payload, key.private, algorithm="EdDSA", headers={k: v for k, v in headers.items() if v})


@pytest.fixture
def key() -> SigningKey:
    return SigningKey("k1")


@pytest.fixture
def server(key: SigningKey) -> JWKSServer:
    return JWKSServer(key)


@pytest.fixture
async def cache(server: JWKSServer) -> AsyncIterator[JWKSCache]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    async with JWKSCache(JWKS_URL, client=client, min_refetch_seconds=0.3) as c:
        yield c


@pytest.fixture
def verifier(cache: JWKSCache) -> TokenVerifier:
    return TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)


async def rejected(verifier: TokenVerifier, token: str) -> DomainError:
    with pytest.raises(Unauthorized) as info:
        await verifier.verify(token)
    assert info.value.status == 401
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")
    return info.value


async def test_valid_token_is_accepted(verifier: TokenVerifier, key: SigningKey, server: JWKSServer) -> None:
    payload = claims(kind="user")
    principal = await verifier.verify(sign(key, payload))
    assert principal.id == uuid.UUID(payload["sub"])
    assert principal.roles == frozenset({Role.AGENT})  # unknown roles are dropped
    assert principal.token_id == payload["jti"]
    assert principal.name == "alice"
    assert principal.kind == "user"
    # Cached: a second token with the same kid costs no fetch.
    await verifier.verify(sign(key, claims()))
    assert server.fetches == 1


async def test_audience_list_containing_ours_is_accepted(verifier: TokenVerifier, key: SigningKey) -> None:
    await verifier.verify(sign(key, claims(aud=["other", AUDIENCE])))


async def test_alg_none_is_rejected(verifier: TokenVerifier, key: SigningKey) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": key.kid}).encode())
    body = b64(json.dumps(claims()).encode())
    for token in (f"{header}.{body}.", jwt.encode(claims(), "", algorithm="none", headers={"typ": "at+jwt"})):
        await rejected(verifier, token)


async def test_hs256_signed_with_the_public_key_is_rejected(verifier: TokenVerifier, key: SigningKey) -> None:
    header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": key.kid}).encode())
    body = b64(json.dumps(claims()).encode())
    for secret in (key.public_raw, key.public_pem, b64(key.public_raw).encode()):
        signature = b64(hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest())
        await rejected(verifier, f"{header}.{body}.{signature}")


async def test_tampered_payload_is_rejected(verifier: TokenVerifier, key: SigningKey) -> None:
    token = sign(key, claims())
    header, _, signature = token.split(".")
    forged = b64(json.dumps(claims(roles=[Role.ADMIN])).encode())
    await rejected(verifier, f"{header}.{forged}.{signature}")
    # Signed by a key that is not the issuer's, under the issuer's kid.
    await rejected(verifier, sign(SigningKey(key.kid), claims()))


async def test_expired_token_is_rejected(verifier: TokenVerifier, key: SigningKey) -> None:
    now = int(time.time())
    error = await rejected(verifier, sign(key, claims(iat=now - 900, nbf=now - 900, exp=now - 120)))
    assert error.detail == "token expired"
    # Within the leeway the token still passes (clock skew between services).
    await verifier.verify(sign(key, claims(exp=now - 5)))


async def test_wrong_audience_or_issuer_is_rejected(verifier: TokenVerifier, key: SigningKey) -> None:
    await rejected(verifier, sign(key, claims(aud="another-system")))
    await rejected(verifier, sign(key, claims(iss="https://evil.example")))


@pytest.mark.parametrize("missing", ["jti", "exp", "iat", "iss", "aud", "sub"])
async def test_missing_required_claim_is_rejected(verifier: TokenVerifier, key: SigningKey, missing: str) -> None:
    payload = claims()
    del payload[missing]
    await rejected(verifier, sign(key, payload))


async def test_subject_must_be_a_uuid(verifier: TokenVerifier, key: SigningKey) -> None:
    await rejected(verifier, sign(key, claims(sub="admin")))


@pytest.mark.parametrize("name", ["jku", "jwk", "x5u", "x5c"])
async def test_token_naming_its_own_key_is_rejected(verifier: TokenVerifier, key: SigningKey, name: str) -> None:
    value: Any = "https://evil.example/jwks.json" if name in ("jku", "x5u") else key.jwk()
    if name == "x5c":
        value = [b64(b"certificate")]
    error = await rejected(verifier, sign(key, claims(), **{name: value}))
    assert error.detail == "token names its own key"


@pytest.mark.parametrize("typ", [None, "JWT", "at+JWT ", "refresh+jwt"])
async def test_token_that_is_not_an_access_token_is_rejected(
    verifier: TokenVerifier, key: SigningKey, typ: str | None
) -> None:
    header = {"alg": "EdDSA", "kid": key.kid, **({"typ": typ} if typ else {})}
    # Built by hand: PyJWT adds typ JWT when none is given.
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    token = f"{signing_input}.{b64(key.private.sign(signing_input.encode()))}"
    error = await rejected(verifier, token)
    assert error.detail == "not an access token"


async def test_garbage_is_rejected(verifier: TokenVerifier) -> None:
    for token in ("", "abc", "a.b.c", "x" * 5000):
        await rejected(verifier, token)


async def test_unknown_kid_refetches_at_most_once_per_window(
    verifier: TokenVerifier, key: SigningKey, server: JWKSServer, cache: JWKSCache
) -> None:
    await verifier.verify(sign(key, claims()))
    assert server.fetches == 1
    forged = [sign(SigningKey(f"forged-{n}"), claims()) for n in range(20)]
    # Right after a fetch: a flood of unknown kids costs nothing.
    for error in await asyncio.gather(*(verifier.verify(t) for t in forged), return_exceptions=True):
        assert isinstance(error, Unauthorized)
    assert server.fetches == 1

    async def window_passed() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() - cache._attempted_at < cache.retry_delay():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    # After the window: the same flood, concurrently, costs exactly one fetch.
    await window_passed()
    for error in await asyncio.gather(*(verifier.verify(t) for t in forged), return_exceptions=True):
        assert isinstance(error, Unauthorized)
    assert server.fetches == 2

    # Key rotation: a new kid published by the issuer is picked up by that refetch.
    rotated = SigningKey("k2")
    server.keys.append(rotated)
    await window_passed()
    principal = await verifier.verify(sign(rotated, claims()))
    assert isinstance(principal, Principal)
    assert server.fetches == 3
    await verifier.verify(sign(key, claims()))  # the old key still verifies
    assert server.fetches == 3


async def test_a_key_rotated_in_just_after_a_background_reload_verifies_at_its_first_token(
    key: SigningKey, server: JWKSServer
) -> None:
    """The e2e failure of 2026-11-29: the periodic reload ran, the issuer rotated, the first token of the new key
    came within the refetch window and was refused as 'unknown signing key' until the next reload."""
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    async with JWKSCache(JWKS_URL, client=client, refresh_seconds=60, min_refetch_seconds=10, autostart=False) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        assert await cache.refresh()  # what the background loop does every refresh interval
        rotated = SigningKey("k2")
        server.keys.append(rotated)
        assert isinstance(await verifier.verify(sign(rotated, claims())), Principal)
        assert server.fetches == 2
        # A forged kid right after it still costs nothing: that reload was asked for by an unknown kid.
        await rejected(verifier, sign(SigningKey("forged"), claims()))
        assert server.fetches == 2


async def test_a_key_rotated_in_seconds_after_the_first_load_verifies_at_its_first_token(
    key: SigningKey, server: JWKSServer
) -> None:
    """The e2e failure of 2026-11-29, second form: the first token loaded the keys (a reload an unknown kid asked
    for), the issuer rotated a few seconds later, and the new key's first token was refused as 'unknown signing
    key' for the rest of a 10 s window. With the default window of 1 s it is fetched."""
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    async with JWKSCache(JWKS_URL, client=client, autostart=False) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        assert isinstance(await verifier.verify(sign(key, claims())), Principal)  # loads: k1 was unknown
        await asyncio.sleep(1.1)
        rotated = SigningKey("k2")
        server.keys.append(rotated)
        assert isinstance(await verifier.verify(sign(rotated, claims())), Principal)
        assert server.fetches == 2


async def test_issuer_unreachable(key: SigningKey) -> None:
    server = JWKSServer(key)
    server.down = True
    async with JWKSCache(JWKS_URL, client=httpx.AsyncClient(transport=httpx.MockTransport(server.handler))) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        with pytest.raises(Unavailable):  # 503: no keys at all is the issuer's fault, not the token's
            await verifier.verify(sign(key, claims()))


async def test_keys_survive_a_failed_refetch(
    verifier: TokenVerifier, key: SigningKey, server: JWKSServer, cache: JWKSCache
) -> None:
    await verifier.verify(sign(key, claims()))
    server.down = True
    assert await cache.refresh() is False  # it tried, failed ...
    await verifier.verify(sign(key, claims()))  # ... and kept serving the keys it had
    assert server.fetches == 2 and cache.failures == 1


# ---------------------------------------------------------------- issue #11, findings 5 and 7


class HangingJWKS(JWKSServer):
    """A JWKS endpoint that, once `hang` is set, accepts requests and answers none until released."""

    def __init__(self, *keys: SigningKey) -> None:
        super().__init__(*keys)
        self.hang = False
        self.waiting = 0
        self.release = asyncio.Event()

    async def async_handler(self, request: httpx.Request) -> httpx.Response:
        if self.hang:
            self.waiting += 1
            await self.release.wait()
        return self.handler(request)


async def eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_withdrawn_key_stops_verifying_within_one_refresh_interval(key: SigningKey) -> None:
    """Finding 5: keys are reloaded on a fixed interval, not only on an unknown kid, so a key the issuer revokes is
    refused within one interval, even for a token this verifier had already verified and cached."""
    server = JWKSServer(key, SigningKey("k2"))
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    async with JWKSCache(JWKS_URL, client=client, refresh_seconds=0.3, min_refetch_seconds=0.3) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        token = sign(key, claims())
        await verifier.verify(token)
        server.keys = [k for k in server.keys if k.kid != key.kid]  # the issuer revokes k1
        withdrawn_at = time.monotonic()
        await eventually(lambda: key.kid not in cache.kids, timeout=2)
        assert time.monotonic() - withdrawn_at < 0.3 + 0.5  # one interval (plus the fetch and the scheduling)
        error = await rejected(verifier, token)
        assert error.detail == "unknown signing key"
        await rejected(verifier, sign(key, claims()))


async def test_a_revoked_subject_is_refused_within_one_refresh_interval(key: SigningKey) -> None:
    """Finding 6: the issuer lists a subject (a client cut off) in its JWKS's `revoked` member; within one reload
    its tokens issued before `not_before` are refused, the one already verified and cached too, while its tokens
    issued since, and other subjects' tokens, verify; malformed entries are ignored."""
    server = JWKSServer(key)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    subject, other = str(uuid.uuid4()), str(uuid.uuid4())
    now = int(time.time())
    async with JWKSCache(JWKS_URL, client=client, refresh_seconds=0.3, min_refetch_seconds=0.3) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        cached, unseen = sign(key, claims(sub=subject, iat=now - 5)), sign(key, claims(sub=subject, iat=now - 1))
        later, bystander = sign(key, claims(sub=subject, iat=now)), sign(key, claims(sub=other, iat=now - 5))
        await verifier.verify(cached)
        server.revoked = [
            {"sub_sha256": subject_digest(subject), "not_before": now},
            {"sub_sha256": subject_digest(other), "not_before": "soon"},
            {"sub": other, "not_before": now},
            "junk",
        ]
        revoked_at = time.monotonic()
        await eventually(lambda: cache.not_before(subject) == now, timeout=2)
        assert time.monotonic() - revoked_at < 0.3 + 0.5
        for token in (cached, unseen):
            assert (await rejected(verifier, token)).detail == "token revoked"
        assert (await verifier.verify(later)).id == uuid.UUID(subject)
        assert (await verifier.verify(bystander)).id == uuid.UUID(other)
        server.revoked = []  # the revocation ages out of the document: nothing is refused for it any more
        await eventually(lambda: cache.not_before(subject) is None, timeout=2)
        assert (await verifier.verify(cached)).id == uuid.UUID(subject)


async def test_a_hanging_jwks_endpoint_does_not_delay_tokens_whose_key_is_known(key: SigningKey) -> None:
    """Finding 7: while a reload hangs, a request whose kid is known is answered at once; an unknown kid waits for
    that reload at most `wait_seconds`; once the endpoint answers again the keys are current."""
    server = HangingJWKS(key)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.async_handler))
    async with JWKSCache(
        JWKS_URL, client=client, refresh_seconds=0.2, min_refetch_seconds=0.2, wait_seconds=0.5
    ) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        await verifier.verify(sign(key, claims()))
        server.hang = True
        await eventually(lambda: server.waiting >= 1)  # the background reload is stuck on the endpoint
        started = time.monotonic()
        for _ in range(50):  # new tokens each time: no verified-token cache helps
            await verifier.verify(sign(key, claims()))
        assert time.monotonic() - started < 0.5, "a known kid must not wait for the hanging fetch"
        started = time.monotonic()
        await rejected(verifier, sign(SigningKey("unknown"), claims()))
        assert time.monotonic() - started < 1.0  # bounded by wait_seconds, not the fetch's own timeout
        rotated = SigningKey("k2")
        server.keys.append(rotated)
        server.hang = False
        server.release.set()
        await eventually(lambda: rotated.kid in cache.kids, timeout=3)
        await verifier.verify(sign(rotated, claims()))


async def test_failed_reloads_back_off(key: SigningKey) -> None:
    """Finding 7: after failures the reloads are spaced 1, 2, 4 ... s apart, whatever the flood of unknown kids."""
    server = JWKSServer(key)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    async with JWKSCache(JWKS_URL, client=client, refresh_seconds=30, min_refetch_seconds=0.05) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        await verifier.verify(sign(key, claims()))
        server.down = True
        forged = [sign(SigningKey(f"forged-{n}"), claims()) for n in range(10)]
        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:
            for error in await asyncio.gather(*(verifier.verify(t) for t in forged), return_exceptions=True):
                assert isinstance(error, Unauthorized) and error.status == 401
            await asyncio.sleep(0.05)
        # In 1.6 s of floods: the first failed fetch, one a second later, then the 2 s delay: 2 or 3 fetches.
        assert 2 <= server.fetches - 1 <= 3, server.fetches
        assert cache.failures == server.fetches - 1
        await verifier.verify(sign(key, claims()))  # the known key is still served


# ---------------------------------------------------------------- as FastAPI dependencies


@pytest.fixture
def app(verifier: TokenVerifier) -> FastAPI:
    application = FastAPI()
    install_error_handlers(application)
    application.state.verifier = verifier

    @application.get("/me")
    async def me(principal: CurrentPrincipal) -> dict[str, str]:
        return {"id": str(principal.id)}

    @application.get("/admin", dependencies=[Depends(require_roles(Role.ADMIN))])
    async def admin() -> dict[str, str]:
        return {"ok": "yes"}

    return application


async def test_dependencies_answer_401_and_403(app: FastAPI, key: SigningKey) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shared.test") as client:
        missing = await client.get("/me")
        assert missing.status_code == 401
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.headers["WWW-Authenticate"] == 'Bearer error="invalid_request"'
        bad = await client.get("/me", headers={"Authorization": "Bearer not-a-token"})
        assert bad.status_code == 401
        assert bad.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        payload = claims()
        token = sign(key, payload)
        ok = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert ok.json() == {"id": payload["sub"]}
        forbidden = await client.get("/admin", headers={"Authorization": f"Bearer {token}"})
        assert forbidden.status_code == 403
        admin_token = sign(key, claims(roles=[Role.ADMIN]))
        allowed = await client.get("/admin", headers={"Authorization": f"bearer {admin_token}"})
        assert allowed.status_code == 200
