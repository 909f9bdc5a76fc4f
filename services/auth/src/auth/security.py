"""Password hashing, signing keys and token minting: the auth service's cryptography, kept in one place."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from typing import Any

import anyio.to_thread
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from itsm_shared.auth import ACCESS_TOKEN_TYPE, ALGORITHMS
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

# Argon2id with argon2-cffi's defaults (m=64 MiB, t=3, p=4); bcrypt only to verify and upgrade old hashes.
_hasher = PasswordHash((Argon2Hasher(), BcryptHasher()))
# Verified against when the username is unknown, so both paths cost one hash (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


async def hash_password(password: str) -> str:
    return await anyio.to_thread.run_sync(_hasher.hash, password)


async def verify_password(password: str, stored: str | None) -> tuple[bool, str | None]:
    """(valid, new hash if the stored one should be upgraded). Runs in a worker thread."""
    valid, updated = await anyio.to_thread.run_sync(_hasher.verify_and_update, password, stored or _DUMMY_HASH)
    return (valid and stored is not None), updated


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Refresh tokens are stored as SHA-256 digests: they are high-entropy, so a fast hash is right here."""
    return hashlib.sha256(token.encode()).hexdigest()


def generate_signing_key() -> tuple[str, str, dict[str, Any]]:
    """(kid, private PEM, public JWK)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_jwk: dict[str, Any] = jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    kid = hashlib.sha256(public_jwk["x"].encode()).hexdigest()[:16]
    public_jwk.update({"kid": kid, "alg": ALGORITHMS[0], "use": "sig"})
    return kid, pem, public_jwk


def mint_access_token(
    *,
    kid: str,
    private_pem: str,
    issuer: str,
    audience: str,
    subject: uuid.UUID,
    roles: list[str],
    kind: str,
    name: str | None,
    ttl_seconds: int,
) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": str(subject),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "jti": str(uuid.uuid4()),
        "roles": roles,
        "kind": kind,
        "name": name,
    }
    return jwt.encode(claims, private_pem, algorithm=ALGORITHMS[0], headers={"kid": kid, "typ": ACCESS_TOKEN_TYPE})
