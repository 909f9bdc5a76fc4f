"""A signing key, a JWKS endpoint over mock HTTP and tokens, for the tests of token verification and of the
refreshing key set (test_auth.py, test_key_set.py; their fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from itsm_shared.auth import (
    Role,
    TokenVerifier,
)
from itsm_shared.errors import DomainError, Unauthorized

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


async def rejected(verifier: TokenVerifier, token: str) -> DomainError:
    with pytest.raises(Unauthorized) as info:
        await verifier.verify(token)
    assert info.value.status == 401
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")
    return info.value
