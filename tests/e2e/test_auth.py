"""Issue #2 through the real gateway: grants, JWKS verification by an independent JOSE library, forged
tokens, refresh reuse, login throttling, RBAC, gateway limits and headers."""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import jwt
import service_table as services
import stack as stack_module
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from .conftest import bearer, token

PASSWORD = "a perfectly fine password"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.status_code, dict(response.headers))
    assert "max-age=" in response.headers.get("strict-transport-security", "")
    assert "frame-ancestors 'none'" in response.headers.get("content-security-policy", "")
    assert "server" not in response.headers


async def new_user(http: httpx.AsyncClient, admin: str, roles: list[str]) -> str:
    username = f"e2e{uuid.uuid4().hex[:10]}"
    created = await http.post(
        "/api/v1/auth/users", headers=bearer(admin), json={"username": username, "password": PASSWORD, "roles": roles}
    )
    assert created.status_code == 201, created.text
    return username


async def test_password_grant_token_verifies_with_an_independent_jose_library(
    http: httpx.AsyncClient, admin: str, gateway: str
) -> None:
    jwks = (await http.get("/api/v1/auth/jwks.json")).json()
    keys = KeySet.import_key_set(jwks)
    decoded = jose_jwt.decode(admin, keys, algorithms=["EdDSA"])
    claims = jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": gateway},  # the issuer is the gateway's URL (test_oauth.py)
        aud={"essential": True, "value": "itsm"},
        exp={"essential": True},
        sub={"essential": True},
        jti={"essential": True},
        iat={"essential": True},
    )
    claims.validate(decoded.claims)
    assert decoded.header["typ"] == "at+jwt"
    assert "admin" in decoded.claims["roles"]
    me = await http.get("/api/v1/auth/me", headers=bearer(admin))
    assert me.status_code == 200
    assert me.json()["id"] == decoded.claims["sub"]


async def test_refresh_and_client_credentials_grants(http: httpx.AsyncClient, admin: str) -> None:
    username = await new_user(http, admin, ["agent"])
    first = await token(http, username, PASSWORD)
    second = await http.post(
        "/api/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert second.status_code == 200
    reuse = await http.post(
        "/api/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    family = await http.post(
        "/api/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": second.json()["refresh_token"]}
    )
    assert family.status_code == 400, "reuse of a spent token must revoke the whole family"

    client = (
        await http.post("/api/v1/auth/clients", headers=bearer(admin), json={"name": "cmdb-sync", "roles": ["agent"]})
    ).json()
    granted = await http.post(
        "/api/v1/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
    )
    assert granted.status_code == 200
    me = await http.get("/api/v1/auth/me", headers=bearer(granted.json()["access_token"]))
    assert me.json()["kind"] == "client"


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def test_every_forged_token_kind_is_401_with_www_authenticate(http: httpx.AsyncClient, admin: str) -> None:
    header, payload, signature = admin.split(".")
    claims = jwt.decode(admin, options={"verify_signature": False})
    kid = jwt.get_unverified_header(admin)["kid"]
    jwk = next(k for k in (await http.get("/api/v1/auth/jwks.json")).json()["keys"] if k["kid"] == kid)
    now = int(time.time())
    forged = {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{payload}.",
        "HS256 signed with the public key": jwt.encode(
            claims, base64.urlsafe_b64decode(jwk["x"] + "=="), algorithm="HS256", headers={"kid": kid, "typ": "at+jwt"}
        ),
        "tampered payload": f"{header}.{_b64({**claims, 'roles': ['admin', 'auditor']})}.{signature}",
        # Re-signing needs the private key, which only the auth service holds: an expired or foreign-audience
        # token is made by editing the claims of a real one, so the signature check must catch it too.
        "expired": f"{header}.{_b64({**claims, 'exp': now - 3600})}.{signature}",
        "wrong audience": f"{header}.{_b64({**claims, 'aud': 'other-system'})}.{signature}",
    }
    for name, forged_token in forged.items():
        response = await http.get("/api/v1/auth/me", headers=bearer(forged_token))
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"].startswith("Bearer"), name
        assert response.headers["content-type"] == "application/problem+json", name
        assert_security_headers(response)


async def test_throttling_answers_like_a_wrong_password(http: httpx.AsyncClient, admin: str) -> None:
    username = await new_user(http, admin, ["requester"])
    form = {"grant_type": "password", "username": username}
    # Eight failures from this address: it now waits 8 s (1, 2, 4, 8 after the fifth) before it is checked again.
    wrong = [await http.post("/api/v1/auth/token", data={**form, "password": "not the password"}) for _ in range(8)]
    locked = await http.post("/api/v1/auth/token", data={**form, "password": PASSWORD})
    unknown = await http.post(
        "/api/v1/auth/token", data={**form, "username": "ghost-" + username, "password": PASSWORD}
    )
    assert [r.status_code for r in wrong] == [400] * 8
    assert locked.status_code == unknown.status_code == 400
    assert locked.json() == unknown.json()


async def test_rbac_on_user_administration(http: httpx.AsyncClient, admin: str) -> None:
    agent = (await token(http, await new_user(http, admin, ["agent"]), PASSWORD))["access_token"]
    assert (await http.get("/api/v1/auth/users", headers=bearer(agent))).status_code == 403
    assert (
        await http.post("/api/v1/auth/users", headers=bearer(agent), json={"username": "x" * 5, "password": PASSWORD})
    ).status_code == 403
    anonymous = await http.get("/api/v1/auth/users")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert (await http.get("/api/v1/auth/users", headers=bearer(admin))).status_code == 200


async def test_body_over_one_mebibyte_is_413_with_headers(http: httpx.AsyncClient, admin: str) -> None:
    response = await http.post(
        "/api/v1/auth/users",
        headers={**bearer(admin), "content-type": "application/json"},
        content=b"{" + b" " * (1024 * 1024 + 10) + b"}",
    )
    assert response.status_code == 413
    assert_security_headers(response)


async def test_unknown_path_is_404_with_security_headers(http: httpx.AsyncClient) -> None:
    response = await http.get("/no/such/thing")
    assert response.status_code == 404
    assert_security_headers(response)


async def test_routes_of_services_not_built_answer_503(http: httpx.AsyncClient, stack: stack_module.Stack) -> None:
    for service in services.table():
        if service.name not in stack.services:
            response = await http.get(service.api_prefix)
            assert response.status_code == 503, service.name
            assert_security_headers(response)


async def test_interactive_docs_render_through_the_gateway(http: httpx.AsyncClient) -> None:
    docs = await http.get("/api/v1/auth/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text
    csp = docs.headers["content-security-policy"]
    assert "http" not in csp  # Swagger UI's files come from the service: no third-party host
    bundle = await http.get("/api/v1/auth/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert "SwaggerUIBundle" in bundle.text[:2000]
    spec = await http.get("/api/v1/auth/openapi.json")
    assert spec.status_code == 200
    assert "/api/v1/auth/token" in spec.json()["paths"]
