"""Bearer-token verification against a JWKS served over (mock) HTTP: what a token must be to pass."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from fastapi import Depends, FastAPI
from itsm_shared.auth import (
    CurrentPrincipal,
    Role,
    TokenVerifier,
    require_roles,
)
from itsm_shared.errors import install_error_handlers

from .jwks_support import AUDIENCE, JWKSServer, SigningKey, b64, claims, rejected, sign


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
