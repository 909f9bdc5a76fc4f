"""The auth HTTP API (CONTRACT §3) against the real app, database and broker."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

import httpx
import jwt
import pytest
from fastapi import FastAPI
from itsm_shared.auth import JWKSCache, TokenVerifier
from itsm_shared.errors import Unauthorized
from pwdlib.hashers.bcrypt import BcryptHasher
from sqlalchemy import text

from .conftest import ADMIN_PASSWORD, admin_token, bearer, login

PASSWORD = "correct horse battery"


async def make_user(client: httpx.AsyncClient, roles: list[str], password: str = PASSWORD) -> dict[str, object]:
    token = await admin_token(client)
    response = await client.post(
        "/api/v1/auth/users",
        headers=bearer(token),
        json={"username": f"u{uuid.uuid4().hex[:10]}", "password": password, "roles": roles},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def sql(app: FastAPI, statement: str, **params: object) -> object:
    async with app.state.sessions() as session:
        result = await session.execute(text(statement), params)
        await session.commit()
        return result


def jwks_verifier(client: httpx.AsyncClient) -> TokenVerifier:
    """How another service verifies this one's tokens (no background reloads: the test's client is short-lived)."""
    cache = JWKSCache("http://auth.test/api/v1/auth/jwks.json", client=client, autostart=False)
    return TokenVerifier(cache, issuer="itsm-auth", audience="itsm")


async def test_password_grant_returns_a_token_another_service_can_verify(client: httpx.AsyncClient) -> None:
    response = await login(client, "admin", ADMIN_PASSWORD)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0 and body["refresh_token"]
    assert response.headers["cache-control"] == "no-store"
    principal = await jwks_verifier(client).verify(body["access_token"])
    assert "admin" in principal.roles
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"iss", "aud", "sub", "exp", "iat", "jti", "roles"} <= claims.keys()
    assert claims["aud"] == "itsm"
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "EdDSA"


async def test_bad_credentials_look_the_same_for_known_and_unknown_users(client: httpx.AsyncClient) -> None:
    user = await make_user(client, ["agent"])
    wrong = await login(client, str(user["username"]), "wrong password here")
    unknown = await login(client, "nobody-" + uuid.uuid4().hex, "wrong password here")
    assert wrong.status_code == unknown.status_code == 400
    assert wrong.json()["error"] == unknown.json()["error"] == "invalid_grant"
    assert wrong.json()["detail"] == unknown.json()["detail"]
    assert wrong.headers["content-type"] == "application/problem+json"


async def test_four_failures_then_success_resets_the_count(client: httpx.AsyncClient) -> None:
    user = await make_user(client, ["agent"])
    name = str(user["username"])
    for _ in range(4):
        await login(client, name, "wrong password here")
    assert (await login(client, name, PASSWORD)).status_code == 200
    for _ in range(4):
        await login(client, name, "wrong password here")
    assert (await login(client, name, PASSWORD)).status_code == 200


async def test_refresh_rotates_and_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    user = await make_user(client, ["agent"])
    first = (await login(client, str(user["username"]), PASSWORD)).json()
    refresh = {"grant_type": "refresh_token"}
    second = await client.post("/api/v1/auth/token", data={**refresh, "refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    rt2 = second.json()["refresh_token"]
    assert rt2 != first["refresh_token"]
    reuse = await client.post("/api/v1/auth/token", data={**refresh, "refresh_token": first["refresh_token"]})
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    after = await client.post("/api/v1/auth/token", data={**refresh, "refresh_token": rt2})
    assert after.status_code == 400, "the reuse must have revoked the newer token of the family too"


async def test_revoke_ends_the_refresh_family(client: httpx.AsyncClient) -> None:
    user = await make_user(client, ["agent"])
    tokens = (await login(client, str(user["username"]), PASSWORD)).json()
    assert (await client.post("/api/v1/auth/revoke", data={"token": tokens["refresh_token"]})).status_code == 200
    assert (await client.post("/api/v1/auth/revoke", data={"token": "never-issued"})).status_code == 200
    again = await client.post(
        "/api/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert again.status_code == 400


async def test_client_credentials(client: httpx.AsyncClient) -> None:
    token = await admin_token(client)
    created = await client.post(
        "/api/v1/auth/clients", headers=bearer(token), json={"name": "monitoring", "roles": ["agent"]}
    )
    assert created.status_code == 201
    body = created.json()
    grant = {"grant_type": "client_credentials", "client_id": body["client_id"]}
    ok = await client.post("/api/v1/auth/token", data={**grant, "client_secret": body["client_secret"]})
    assert ok.status_code == 200 and "refresh_token" not in ok.json()
    principal = await jwks_verifier(client).verify(ok.json()["access_token"])
    assert principal.kind == "client" and principal.roles == {"agent"}
    bad = await client.post("/api/v1/auth/token", data={**grant, "client_secret": "wrong"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    listed = await client.get("/api/v1/auth/clients", headers=bearer(token))
    assert all("secret" not in k for c in listed.json() for k in c)


async def test_unsupported_grant_and_missing_parameters(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/auth/token", data={"grant_type": "implicit"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = await client.post("/api/v1/auth/token", data={"grant_type": "password", "username": "admin"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


async def test_me(client: httpx.AsyncClient) -> None:
    user = await make_user(client, ["requester"])
    token = (await login(client, str(user["username"]), PASSWORD)).json()["access_token"]
    me = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert me.status_code == 200 and me.json()["id"] == user["id"] and me.json()["roles"] == ["requester"]


async def test_user_admin_is_admin_only(client: httpx.AsyncClient) -> None:
    user = await make_user(client, ["agent", "auditor"])
    token = (await login(client, str(user["username"]), PASSWORD)).json()["access_token"]
    for method, path in [
        ("GET", "/api/v1/auth/users"),
        ("POST", "/api/v1/auth/users"),
        ("PATCH", f"/api/v1/auth/users/{user['id']}"),
        ("POST", "/api/v1/auth/clients"),
    ]:
        r = await client.request(method, path, headers=bearer(token), json={})
        assert r.status_code == 403, (method, path, r.status_code)
    anonymous = await client.get("/api/v1/auth/users")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def test_forged_tokens_are_401(client: httpx.AsyncClient) -> None:
    good = await admin_token(client)
    header, payload, signature = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    kid = jwt.get_unverified_header(good)["kid"]
    jwks = (await client.get("/api/v1/auth/jwks.json")).json()
    public_x = next(k for k in jwks["keys"] if k["kid"] == kid)["x"]
    forged = {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{payload}.",
        "hs256 with public key": jwt.encode(claims, public_x, algorithm="HS256", headers={"kid": kid, "typ": "at+jwt"}),
        "tampered payload": f"{header}.{_b64({**claims, 'roles': ['admin', 'auditor']})}.{signature}",
        "garbage": "not.a.token",
    }
    for name, token in forged.items():
        r = await client.get("/api/v1/auth/me", headers=bearer(token))
        assert r.status_code == 401, name
        assert r.headers["www-authenticate"].startswith("Bearer"), name
        assert r.headers["content-type"] == "application/problem+json"


async def test_expired_and_wrong_audience_tokens_are_401(client: httpx.AsyncClient, app: FastAPI) -> None:
    async with app.state.sessions() as session:
        from auth import keys

        key = await keys.signing_key(session)
    assert key is not None
    now = int(time.time())
    base = {"iss": "itsm-auth", "aud": "itsm", "sub": str(uuid.uuid4()), "iat": now, "jti": "x", "roles": ["admin"]}
    headers = {"kid": key.kid, "typ": "at+jwt"}
    cases = {
        "expired": {**base, "iat": now - 3600, "exp": now - 120},
        "wrong audience": {**base, "aud": "other", "exp": now + 300},
        "wrong issuer": {**base, "iss": "evil", "exp": now + 300},
        "no exp": base,
    }
    for name, claims in cases.items():
        token = jwt.encode(claims, keys.private_pem(key), algorithm="EdDSA", headers=headers)
        r = await client.get("/api/v1/auth/users", headers=bearer(token))
        assert r.status_code == 401, name


async def test_passwords_shorter_than_12_and_read_only_fields_are_422(client: httpx.AsyncClient) -> None:
    token = await admin_token(client)
    short = await client.post(
        "/api/v1/auth/users", headers=bearer(token), json={"username": "shorty", "password": "elevenchars"}
    )
    assert short.status_code == 422 and short.json()["errors"][0]["loc"] == ["body", "password"]
    sneaky = await client.post(
        "/api/v1/auth/users",
        headers=bearer(token),
        json={"username": "sneaky", "password": PASSWORD, "id": str(uuid.uuid4())},
    )
    assert sneaky.status_code == 422
    huge = await client.post(
        "/api/v1/auth/users", headers=bearer(token), json={"username": "huge", "password": "x" * 100_000}
    )
    assert huge.status_code == 422
    unknown_role = await client.post(
        "/api/v1/auth/users", headers=bearer(token), json={"username": "roley", "password": PASSWORD, "roles": ["root"]}
    )
    assert unknown_role.status_code == 422
    users = (await client.get("/api/v1/auth/users?limit=200", headers=bearer(token))).json()["items"]
    assert not {"shorty", "sneaky", "huge", "roley"} & {u["username"] for u in users}


async def test_passwords_are_argon2id_and_bcrypt_is_upgraded_on_login(client: httpx.AsyncClient, app: FastAPI) -> None:
    user = await make_user(client, ["agent"])
    row = (await sql(app, "SELECT password_hash FROM user_account WHERE id = :i", i=user["id"])).one()
    assert row.password_hash.startswith("$argon2id$")
    legacy = BcryptHasher().hash(PASSWORD)
    await sql(app, "UPDATE user_account SET password_hash = :h WHERE id = :i", h=legacy, i=user["id"])
    assert (await login(client, str(user["username"]), PASSWORD)).status_code == 200
    row = (await sql(app, "SELECT password_hash FROM user_account WHERE id = :i", i=user["id"])).one()
    assert row.password_hash.startswith("$argon2id$")


async def test_idempotency_key_on_user_creation(client: httpx.AsyncClient) -> None:
    token = await admin_token(client)
    key = {"Idempotency-Key": uuid.uuid4().hex, **bearer(token)}
    body = {"username": f"idem{uuid.uuid4().hex[:8]}", "password": PASSWORD}
    responses = await asyncio.gather(*[client.post("/api/v1/auth/users", headers=key, json=body) for _ in range(3)])
    assert {r.status_code for r in responses} <= {201, 409}
    created = [r for r in responses if r.status_code == 201]
    assert len({r.json()["id"] for r in created}) == 1
    replay = await client.post("/api/v1/auth/users", headers=key, json=body)
    assert replay.status_code == 201 and replay.json()["id"] == created[0].json()["id"]
    other = await client.post("/api/v1/auth/users", headers=key, json={**body, "full_name": "changed"})
    assert other.status_code == 422
    users = (await client.get("/api/v1/auth/users?limit=200", headers=bearer(token))).json()["items"]
    assert [u["username"] for u in users].count(body["username"]) == 1


async def test_patch_honours_if_match_and_disabling_blocks_login(client: httpx.AsyncClient) -> None:
    token = await admin_token(client)
    user = await make_user(client, ["agent"])
    path = f"/api/v1/auth/users/{user['id']}"
    current = await client.get(path, headers=bearer(token))
    etag = current.headers["etag"]
    ok = await client.patch(path, headers={**bearer(token), "If-Match": etag}, json={"roles": ["agent", "cab_member"]})
    assert ok.status_code == 200 and ok.json()["roles"] == ["agent", "cab_member"] and ok.headers["etag"] != etag
    stale = await client.patch(path, headers={**bearer(token), "If-Match": etag}, json={"active": False})
    assert stale.status_code == 412
    assert (await client.get(path, headers=bearer(token))).json()["active"] is True
    assert (await client.patch(path, headers=bearer(token), json={"active": False})).status_code == 200
    assert (await login(client, str(user["username"]), PASSWORD)).status_code == 400


async def test_users_list_is_keyset_paginated(client: httpx.AsyncClient) -> None:
    token = await admin_token(client)
    for _ in range(5):
        await make_user(client, ["requester"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "sort": "username", "role": "requester"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/v1/auth/users", headers=bearer(token), params=params)).json()
        seen += [u["username"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) >= 5
    assert (await client.get("/api/v1/auth/users?limit=500", headers=bearer(token))).status_code == 422


async def test_key_rotation_publishes_old_and_new_keys(client: httpx.AsyncClient) -> None:
    old_token = await admin_token(client)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    rotated = await client.post("/api/v1/auth/keys/rotate", headers=bearer(old_token))
    assert rotated.status_code == 201
    new_kid = rotated.json()["kid"]
    kids = {k["kid"] for k in (await client.get("/api/v1/auth/jwks.json")).json()["keys"]}
    assert {old_kid, new_kid} <= kids
    new_token = await admin_token(client)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    verifier = jwks_verifier(client)
    await verifier.verify(old_token)
    await verifier.verify(new_token)
    with pytest.raises(Unauthorized):
        await verifier.verify(new_token[:-4] + "AAAA")


async def test_asyncapi_documents_the_published_events(client: httpx.AsyncClient) -> None:
    document = (await client.get("/asyncapi.json")).json()
    assert document["asyncapi"].startswith("3.")
    assert {"itsm.auth.user_created", "itsm.auth.login_failed", "itsm.auth.token_revoked"} <= set(document["channels"])
    assert (await client.get("/api/v1/auth/asyncapi.json")).json() == document


async def test_creates_answer_201_with_their_headers_and_replay_them(client: httpx.AsyncClient) -> None:
    token = await admin_token(client)
    created = await client.post(
        "/api/v1/auth/users",
        headers=bearer(token),
        json={"username": f"h{uuid.uuid4().hex[:10]}", "password": PASSWORD},
    )
    assert created.status_code == 201 and created.headers["etag"] == '"1"'
    assert created.headers["location"] == f"/api/v1/auth/users/{created.json()['id']}"
    assert "password_hash" not in created.json()
    headers = {"Idempotency-Key": uuid.uuid4().hex, **bearer(token)}
    body = {"name": "backup", "roles": ["auditor"]}
    first = await client.post("/api/v1/auth/clients", headers=headers, json=body)
    again = await client.post("/api/v1/auth/clients", headers=headers, json=body)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    for response in (first, again):  # the secret is in the body
        assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"
        assert "location" not in response.headers  # its path is by client_id, not id
    assert first.headers["etag"] == '"1"'  # the client's version (PATCH /clients/{client_id} takes If-Match)
    listed = (await client.get("/api/v1/auth/clients", headers=bearer(token))).json()
    assert [c["client_id"] for c in listed].count(first.json()["client_id"]) == 1
