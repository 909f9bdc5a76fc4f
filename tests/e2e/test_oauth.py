"""Issue #12, point 6, through the gateway: an independent OAuth 2.0 client library (authlib) finds the RFC 8414
authorization server metadata where RFC 8414 §3.1 puts it for the issuer (the gateway's URL, which is also the `iss`
of the tokens), validates it, and gets tokens by the password grant (a public client, then refresh and revocation)
and by the client_credentials grant with either client authentication, HTTP Basic or the form; the other services
accept those tokens."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import stack as stack_module
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.starlette_client import OAuth
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata, get_well_known_url
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from .conftest import bearer, create_user
from .test_auth import assert_security_headers

PASSWORD = "a perfectly fine password"


@pytest.fixture
def issuer(stack: stack_module.Stack) -> str:
    """The gateway's URL: what the runner gives every service as ITSM_JWT_ISSUER."""
    return stack.settings.gateway_url


async def verified(http: httpx.AsyncClient, document: dict[str, Any], access_token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set((await http.get(document["jwks_uri"])).json())
    decoded = jose_jwt.decode(access_token, keys, algorithms=document["access_token_signing_alg_values_supported"])
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": document["issuer"]}, aud={"essential": True, "value": "itsm"}
    ).validate(decoded.claims)
    return dict(decoded.claims)


async def test_the_metadata_is_served_through_the_gateway_at_the_issuers_well_known_url(
    http: httpx.AsyncClient, issuer: str
) -> None:
    url = get_well_known_url(issuer, external=True)  # authlib's RFC 8414 §3.1 derivation
    response = await http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_security_headers(response)
    document = response.json()
    assert document["issuer"] == issuer  # §3.3: identical to the issuer the URL was made from
    assert document["token_endpoint"] == f"{issuer}/api/v1/auth/token"
    metadata = AuthorizationServerMetadata(document)
    for key in metadata.REGISTRY_KEYS:
        if key != "response_types_supported":  # REQUIRED, and empty here (no authorization endpoint)
            getattr(metadata, f"validate_{key}")()
    assert document["response_types_supported"] == []
    assert set(document["grant_types_supported"]) == {"password", "refresh_token", "client_credentials"}
    assert {"client_secret_basic", "client_secret_post"} <= set(document["token_endpoint_auth_methods_supported"])
    for endpoint in ("token_endpoint", "revocation_endpoint", "jwks_uri", "service_documentation"):
        assert document[endpoint].startswith(f"{issuer}/api/v1/auth/"), endpoint


async def test_authlib_discovers_the_server_and_gets_tokens_by_both_grants(
    http: httpx.AsyncClient, admin: str, issuer: str
) -> None:
    client = await http.post(
        "/api/v1/auth/clients", headers=bearer(admin), json={"name": "authlib", "roles": ["agent"]}
    )
    assert client.status_code == 201, client.text
    svc = client.json()
    username = f"oa{uuid.uuid4().hex[:8]}"
    made = await create_user(http, admin, username, PASSWORD, ["agent"])

    oauth = OAuth()
    for method in ("client_secret_basic", "client_secret_post"):
        registered = oauth.register(
            method,
            client_id=svc["client_id"],
            client_secret=svc["client_secret"],
            server_metadata_url=get_well_known_url(issuer, external=True),
            client_kwargs={"token_endpoint_auth_method": method},
        )
        document = await registered.load_server_metadata()
        granted = await registered.fetch_access_token(grant_type="client_credentials")
        claims = await verified(http, document, granted["access_token"])
        assert claims["iss"] == issuer and claims["sub"] == svc["id"] and "refresh_token" not in granted
        # Another service takes the token: it verifies the same `iss`.
        listed = await http.get("/api/v1/incidents", headers=bearer(granted["access_token"]))
        assert listed.status_code == 200, listed.text

    async with AsyncOAuth2Client(token_endpoint_auth_method="none") as public:
        got = await public.fetch_token(document["token_endpoint"], username=username, password=PASSWORD)
        claims = await verified(http, document, got["access_token"])
        assert claims["iss"] == issuer and claims["sub"] == made["id"]
        me = await http.get("/api/v1/auth/me", headers=bearer(got["access_token"]))
        assert me.status_code == 200 and me.json()["username"] == username
        refreshed = await public.refresh_token(document["token_endpoint"], refresh_token=got["refresh_token"])
        assert (
            await public.revoke_token(document["revocation_endpoint"], refreshed["refresh_token"])
        ).status_code == 200
    spent = await http.post(
        document["token_endpoint"], data={"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]}
    )
    assert spent.status_code == 400 and spent.json()["error"] == "invalid_grant"


async def test_a_failed_basic_authentication_through_the_gateway(http: httpx.AsyncClient) -> None:
    refused = await http.post(
        "/api/v1/auth/token",
        data={"grant_type": "client_credentials"},
        auth=httpx.BasicAuth("svc-nobody", "not-a-secret"),
    )
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    assert refused.headers["www-authenticate"].startswith("Basic")
