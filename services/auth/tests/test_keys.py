"""Issue #11, findings 1, 5 and 14: signing keys encrypted at rest under a KEK only this service is given, retired
keys deleted, emergency revocation that every service honours within one JWKS refresh interval, and the start-up
refusals (no KEK, a wrong KEK, a short bootstrap password)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from auth import keys, security
from auth.config import AuthSettings
from auth.models import SigningKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from itsm_shared.auth import JWKSCache, TokenVerifier
from itsm_shared.db import transaction
from itsm_shared.errors import Unauthorized
from itsm_shared.testing import Listen, eventually
from sqlalchemy import text

from .conftest import KEK, admin_token, bearer

REFRESH_SECONDS = 0.5


async def key_rows(app: FastAPI) -> dict[str, dict[str, object]]:
    async with app.state.sessions() as session:
        result = await session.execute(
            text("SELECT kid, private_pem, private_key_encrypted, retire_at FROM signing_key")
        )
        return {r.kid: dict(r._mapping) for r in result.all()}


def new_kek() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


# ---------------------------------------------------------------- finding 1: encrypted at rest


async def test_the_private_key_is_stored_encrypted(client: httpx.AsyncClient, app: FastAPI) -> None:
    """Code execution in another service (or a database dump) no longer yields a key that forges admin tokens."""
    kid = jwt.get_unverified_header(await admin_token(client))["kid"]
    row = (await key_rows(app))[kid]
    stored = str(row["private_key_encrypted"])
    assert row["private_pem"] is None
    assert stored.startswith("kek1:") and "PRIVATE KEY" not in stored
    encryption = security.KeyEncryption(base64.urlsafe_b64decode(KEK))
    pem = encryption.decrypt(kid, stored)
    public = next(k for k in (await client.get("/api/v1/auth/jwks.json")).json()["keys"] if k["kid"] == kid)
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    assert jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)["x"] == public["x"]
    with pytest.raises(security.KeyEncryptionError):  # another KEK cannot read it
        security.KeyEncryption(base64.urlsafe_b64decode(new_kek())).decrypt(kid, stored)
    with pytest.raises(security.KeyEncryptionError):  # nor can the ciphertext be moved to another key's row
        encryption.decrypt("another-kid", stored)


async def test_a_key_stored_in_clear_is_encrypted_at_start(app: FastAPI) -> None:
    """Rows from before encryption at rest (the migration cannot encrypt: it has no KEK) are encrypted, and their
    clear copy removed, by the start-up step."""
    kid, pem, jwk = security.generate_signing_key()
    retire_at = datetime.now(UTC) + timedelta(minutes=5)
    async with transaction(app.state.sessions) as session:
        session.add(SigningKey(kid=kid, private_pem=pem, public_jwk=jwk, retire_at=retire_at))
    async with transaction(app.state.sessions) as session:
        await keys.prepare_keys(session)
    row = (await key_rows(app))[kid]
    assert row["private_pem"] is None
    assert security.key_encryption().decrypt(kid, str(row["private_key_encrypted"])) == pem


async def test_keys_under_a_previous_kek_are_re_encrypted_at_start(app: FastAPI) -> None:
    """KEK rotation: started with the new KEK and the old one in ITSM_AUTH_KEK_PREVIOUS, the service re-encrypts
    every key under the new one; the old KEK can then be dropped."""
    old, new = security.key_encryption(), security.KeyEncryption(base64.urlsafe_b64decode(new_kek()))

    async def start_with(encryption: security.KeyEncryption) -> None:
        security._encryption = encryption
        async with transaction(app.state.sessions) as session:
            await keys.prepare_keys(session)

    try:
        await start_with(security.KeyEncryption(new.current, (old.current,)))
        rows = await key_rows(app)
        assert rows and all(new.encrypted_under_current(str(r["private_key_encrypted"])) for r in rows.values())
        await start_with(new)  # the old KEK is no longer needed
    finally:
        await start_with(security.KeyEncryption(old.current, (new.current,)))  # back to the session's KEK
        security._encryption = old


def start_auth(environment: dict[str, str], **env: str | None) -> subprocess.CompletedProcess[str]:
    """Start the auth service as a deployment does (uvicorn), with `env` over the session's environment; it is
    expected to refuse to start, and is stopped after 60 s otherwise."""
    merged = {**os.environ, **environment}
    for name, value in env.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    command = [sys.executable, "-m", "uvicorn", "auth.main:app", "--port", "0", "--lifespan", "on"]
    return subprocess.run(command, env=merged, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.usefixtures("app")
def test_without_a_kek_the_service_does_not_start(environment: dict[str, str], tmp_path: Path) -> None:
    missing = start_auth(environment, ITSM_AUTH_KEK=None, ITSM_AUTH_KEK_FILE=None)
    assert missing.returncode != 0
    assert "no key-encryption key: ITSM_AUTH_KEK and ITSM_AUTH_KEK_FILE are unset" in missing.stderr + missing.stdout
    bad = tmp_path / "kek"
    bad.write_text("too short\n")
    unusable = start_auth(environment, ITSM_AUTH_KEK=None, ITSM_AUTH_KEK_FILE=str(bad))
    assert unusable.returncode != 0 and "is not 32 bytes" in unusable.stderr + unusable.stdout
    wrong = start_auth(environment, ITSM_AUTH_KEK=new_kek())
    assert wrong.returncode != 0
    assert "which this service is not given" in wrong.stderr + wrong.stdout


def test_the_kek_can_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_text(KEK + "\n")
    from_file = security.load_key_encryption(AuthSettings(auth_kek=None, auth_kek_file=path))
    assert from_file.current == base64.urlsafe_b64decode(KEK)
    with pytest.raises(security.KeyEncryptionError, match="not both"):
        security.load_key_encryption(AuthSettings(auth_kek=KEK, auth_kek_file=path))


async def test_a_retired_key_is_deleted_once_no_token_it_signed_can_be_valid(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    token = await admin_token(client)
    old_kid = jwt.get_unverified_header(token)["kid"]
    assert (await client.post("/api/v1/auth/keys/rotate", headers=bearer(token))).status_code == 201
    row = (await key_rows(app))[old_kid]
    assert isinstance(row["retire_at"], datetime)  # kept, public part in the JWKS, until its tokens expire
    async with app.state.sessions() as session:
        await session.execute(
            text("UPDATE signing_key SET retire_at = now() - interval '1 second' WHERE kid = :kid"), {"kid": old_kid}
        )
        await session.commit()
    # The upkeep loop (every ITSM_JWKS_REFRESH_SECONDS) deletes the row, private key included.
    await eventually(lambda: key_rows(app), lambda rows: old_kid not in rows, timeout=10, what="retired key deleted")
    assert old_kid not in {k["kid"] for k in (await client.get("/api/v1/auth/jwks.json")).json()["keys"]}


# ---------------------------------------------------------------- finding 5: emergency revocation


async def test_a_revoked_key_is_refused_by_another_service_within_the_refresh_interval(
    client: httpx.AsyncClient, app: FastAPI, listen: Listen
) -> None:
    """The signing key leaks: an admin revokes it. It leaves the JWKS at once, its private part is deleted, a new
    key signs, and a service verifying from the JWKS (another service's TokenVerifier + JWKSCache) refuses its
    tokens within one refresh interval, even a token it had already verified and cached."""
    probe = await listen("auth.key_revoked")
    stolen = await admin_token(client)
    kid = jwt.get_unverified_header(stolen)["kid"]
    async with JWKSCache(
        "http://auth.test/api/v1/auth/jwks.json", client=client, refresh_seconds=REFRESH_SECONDS
    ) as cache:
        elsewhere = TokenVerifier(cache, issuer="itsm-auth", audience="itsm")
        await elsewhere.verify(stolen)
        revoked = await client.post(f"/api/v1/auth/keys/{kid}/revoke", headers=bearer(stolen))
        assert revoked.status_code == 200, revoked.text
        revoked_at = time.monotonic()
        assert kid not in {k["kid"] for k in revoked.json()} and any(k["signing"] for k in revoked.json())
        assert kid not in {k["kid"] for k in (await client.get("/api/v1/auth/jwks.json")).json()["keys"]}
        assert kid not in await key_rows(app)  # the private key is gone

        async def refused() -> bool:
            try:
                await elsewhere.verify(stolen)
            except Unauthorized:
                return True
            return False

        await eventually(refused, timeout=REFRESH_SECONDS + 3, what="the revoked key's token refused elsewhere")
        assert time.monotonic() - revoked_at < REFRESH_SECONDS + 3
        # The auth service itself refuses it at once (it reloads its keys after the revocation commits).
        assert (await client.get("/api/v1/auth/me", headers=bearer(stolen))).status_code == 401
        fresh = await admin_token(client)
        assert jwt.get_unverified_header(fresh)["kid"] != kid
        await elsewhere.verify(fresh)
    event = await probe.one(kid, "auth.key_revoked")
    assert event["data"]["was_signing"] is True and event["data"]["replaced_by"]


async def test_revoking_a_retired_key_and_the_refusals(client: httpx.AsyncClient) -> None:
    token = await admin_token(client)
    old_kid = jwt.get_unverified_header(token)["kid"]
    new_kid = (await client.post("/api/v1/auth/keys/rotate", headers=bearer(token))).json()["kid"]
    token = await admin_token(client)
    revoked = await client.post(f"/api/v1/auth/keys/{old_kid}/revoke", headers=bearer(token))
    assert revoked.status_code == 200
    assert [k["kid"] for k in revoked.json() if k["signing"]] == [new_kid]  # the signing key did not change
    assert (await client.post(f"/api/v1/auth/keys/{old_kid}/revoke", headers=bearer(token))).status_code == 404
    assert (await client.post("/api/v1/auth/keys/bad%20kid/revoke", headers=bearer(token))).status_code == 422
    agent = await client.post(
        "/api/v1/auth/users",
        headers=bearer(token),
        json={"username": f"k{os.urandom(4).hex()}", "password": "long enough password", "roles": ["agent"]},
    )
    agent_token = (
        await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": agent.json()["username"], "password": "long enough password"},
        )
    ).json()["access_token"]
    assert (await client.post(f"/api/v1/auth/keys/{new_kid}/revoke", headers=bearer(agent_token))).status_code == 403


# ---------------------------------------------------------------- finding 14: the bootstrap password


def test_a_short_bootstrap_password_is_refused() -> None:
    with pytest.raises(ValueError, match="ITSM_BOOTSTRAP_ADMIN_PASSWORD must be 12 to 256 characters"):
        AuthSettings(bootstrap_admin_password="elevenchars")
    assert AuthSettings(bootstrap_admin_password="").bootstrap_admin_password is None  # unset, as compose passes it
    assert AuthSettings(bootstrap_admin_password="twelve chars") is not None


@pytest.mark.usefixtures("app")
def test_a_short_bootstrap_password_stops_the_start(environment: dict[str, str]) -> None:
    refused = start_auth(environment, ITSM_BOOTSTRAP_ADMIN_PASSWORD="short")
    assert refused.returncode != 0
    assert "ITSM_BOOTSTRAP_ADMIN_PASSWORD must be 12 to 256 characters" in refused.stderr + refused.stdout
