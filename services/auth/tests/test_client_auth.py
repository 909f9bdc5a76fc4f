"""Issue #12, point 6: client authentication at the token endpoint by HTTP Basic (`client_secret_basic`, RFC 6749
§2.3.1) as well as in the form (`client_secret_post`), and the RFC 8414 authorization server metadata, driven by an
independent OAuth client library (authlib) against the app in-process. Through the gateway: tests/e2e/test_oauth.py."""

from __future__ import annotations

import base64
import uuid
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
from auth.config import get_settings
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.starlette_client import OAuth
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from fastapi import FastAPI
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from .conftest import ADMIN_PASSWORD, admin_token, bearer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib")

TOKEN = "/api/v1/auth/token"
METADATA = "/.well-known/oauth-authorization-server"
PASSWORD = "a long enough password"


def basic(client_id: str, secret: str) -> dict[str, str]:
    """RFC 6749 §2.3.1: each part form-urlencoded, then joined by a colon and base64-encoded."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}


async def new_client(client: httpx.AsyncClient, roles: list[str] | None = None) -> dict[str, Any]:
    created = await client.post(
        "/api/v1/auth/clients",
        headers=bearer(await admin_token(client)),
        json={"name": f"c{uuid.uuid4().hex[:6]}", "roles": roles or ["agent"]},
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


def assert_invalid_client(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_client_secret_basic_and_client_secret_post_both_grant(client: httpx.AsyncClient) -> None:
    svc = await new_client(client)
    grant = {"grant_type": "client_credentials"}
    by_header = await client.post(TOKEN, data=grant, headers=basic(svc["client_id"], svc["client_secret"]))
    assert by_header.status_code == 200, by_header.text
    assert by_header.headers["cache-control"] == "no-store"
    by_form = await client.post(
        TOKEN, data={**grant, "client_id": svc["client_id"], "client_secret": svc["client_secret"]}
    )
    assert by_form.status_code == 200, by_form.text
    # The client_id may also be in the form beside the header, when it is the same client.
    both_ids = await client.post(
        TOKEN, data={**grant, "client_id": svc["client_id"]}, headers=basic(svc["client_id"], svc["client_secret"])
    )
    assert both_ids.status_code == 200, both_ids.text
    # The parts are form-urlencoded before base64: an encoded character decodes to the same client.
    encoded = svc["client_id"].replace("-", "%2D")
    pair = base64.b64encode(f"{encoded}:{svc['client_secret']}".encode()).decode()
    assert (await client.post(TOKEN, data=grant, headers={"Authorization": f"Basic {pair}"})).status_code == 200


async def test_failed_basic_authentication_is_401_invalid_client_with_www_authenticate(
    client: httpx.AsyncClient,
) -> None:
    svc = await new_client(client)
    grant = {"grant_type": "client_credentials"}
    assert_invalid_client(await client.post(TOKEN, data=grant, headers=basic(svc["client_id"], "wrong")))
    assert_invalid_client(await client.post(TOKEN, data=grant, headers=basic("svc-unknown", svc["client_secret"])))
    for header in ("Basic !!!not-base64", f"Basic {base64.b64encode(b'no-colon').decode()}", "Bearer abc"):
        assert_invalid_client(await client.post(TOKEN, data=grant, headers={"Authorization": header}))
    assert_invalid_client(await client.post(TOKEN, data=grant, headers={"Authorization": "Basic " + "A" * 3000}))
    # No client authentication at all is invalid_client too (RFC 6749 §5.2), and so is a client_id alone.
    assert_invalid_client(await client.post(TOKEN, data=grant))
    assert_invalid_client(await client.post(TOKEN, data={**grant, "client_id": svc["client_id"]}))


async def test_one_authentication_method_per_request(client: httpx.AsyncClient) -> None:
    svc = await new_client(client)
    header = basic(svc["client_id"], svc["client_secret"])
    form = {"grant_type": "client_credentials", "client_id": svc["client_id"], "client_secret": svc["client_secret"]}
    both = await client.post(TOKEN, data=form, headers=header)
    assert both.status_code == 400 and both.json()["error"] == "invalid_request", both.text
    other = await client.post(TOKEN, data={"grant_type": "client_credentials", "client_id": "svc-x"}, headers=header)
    assert other.status_code == 400 and other.json()["error"] == "invalid_request", other.text
    secret_only = await client.post(TOKEN, data={"grant_type": "client_credentials", "client_secret": "s"})
    assert secret_only.status_code == 400 and secret_only.json()["error"] == "invalid_request"


async def test_user_grants_are_for_public_clients(client: httpx.AsyncClient) -> None:
    """The password and refresh grants need no client authentication; Swagger UI's empty Basic pair is none. A
    service client that authenticates there is refused: it is registered for client_credentials only."""
    login = {"grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD}
    swagger = await client.post(TOKEN, data=login, headers={"Authorization": "Basic Og=="})
    assert swagger.status_code == 200, swagger.text
    named = await client.post(TOKEN, data={**login, "client_id": "swagger-ui"})
    assert named.status_code == 200, named.text
    svc = await new_client(client)
    refused = await client.post(TOKEN, data=login, headers=basic(svc["client_id"], svc["client_secret"]))
    assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client", refused.text
    refresh = {"grant_type": "refresh_token", "refresh_token": swagger.json()["refresh_token"]}
    wrong = await client.post(TOKEN, data={**refresh, "client_id": svc["client_id"], "client_secret": "wrong"})
    assert_invalid_client(wrong)
    assert (await client.post(TOKEN, data=refresh)).status_code == 200  # the refused attempts spent nothing


async def test_metadata_with_the_default_issuer_names_the_address_called(client: httpx.AsyncClient) -> None:
    """ITSM_JWT_ISSUER unset is `itsm-auth`, no URL: the endpoints are at the address the request came to."""
    response = await client.get(METADATA)
    assert response.status_code == 200
    document = response.json()
    assert document["issuer"] == "itsm-auth"
    assert document["token_endpoint"] == f"{client.base_url}{TOKEN}"
    assert document["revocation_endpoint"] == f"{client.base_url}/api/v1/auth/revoke"
    assert document["jwks_uri"] == f"{client.base_url}/api/v1/auth/jwks.json"
    assert document["grant_types_supported"] == ["password", "refresh_token", "client_credentials"]
    assert {"client_secret_basic", "client_secret_post"} <= set(document["token_endpoint_auth_methods_supported"])
    assert document["access_token_signing_alg_values_supported"] == ["EdDSA"]
    assert document["response_types_supported"] == []  # no authorization endpoint


def use_url_issuer(monkeypatch: pytest.MonkeyPatch) -> str:
    """The issuer as deployments set it, the gateway's public URL. The auth service's own verifier keeps the issuer
    it started with and refuses the tokens issued from now on: the test verifies them with the metadata's JWKS."""
    issuer = "https://auth.test"
    monkeypatch.setattr(get_settings(), "jwt_issuer", issuer)
    return issuer


class Recording(httpx.ASGITransport):
    """The app in-process, keeping each token request as sent, to see which client authentication was used."""

    def __init__(self, app: FastAPI) -> None:
        super().__init__(app=app)
        self.token_requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == TOKEN:
            await request.aread()
            self.token_requests.append(request)
        return await super().handle_async_request(request)


@pytest.fixture
def transport(app: FastAPI) -> Recording:
    return Recording(app)


async def test_authlib_discovers_the_metadata_and_gets_tokens_by_both_grants(
    client: httpx.AsyncClient, transport: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = await new_client(client, ["agent"])
    username = f"al{uuid.uuid4().hex[:8]}"
    made = await client.post(
        "/api/v1/auth/users",
        headers=bearer(await admin_token(client)),
        json={"username": username, "password": PASSWORD, "roles": ["requester"]},
    )
    assert made.status_code == 201, made.text
    url_issuer = use_url_issuer(monkeypatch)

    # authlib's registry loads the metadata from the URL RFC 8414 §3.1 derives from the issuer.
    metadata_url = f"{url_issuer}{METADATA}"
    oauth = OAuth()
    for method in ("client_secret_basic", "client_secret_post"):
        app = oauth.register(
            method,
            client_id=svc["client_id"],
            client_secret=svc["client_secret"],
            server_metadata_url=metadata_url,
            client_kwargs={"token_endpoint_auth_method": method, "transport": transport},
        )
        document = await app.load_server_metadata()
        AuthorizationServerMetadata(document).validate_issuer()
        granted = await app.fetch_access_token(grant_type="client_credentials")
        sent = transport.token_requests[-1]
        in_header = sent.headers.get("authorization", "").startswith("Basic ")
        assert in_header == (method == "client_secret_basic")
        assert (b"client_secret=" in sent.content) == (method == "client_secret_post")
        claims = await verified(document, granted["access_token"], transport)
        assert claims["sub"] == svc["id"] and claims["iss"] == url_issuer and claims["roles"] == ["agent"]
        assert "refresh_token" not in granted

    metadata = AuthorizationServerMetadata(document)
    for key in metadata.REGISTRY_KEYS:
        if key != "response_types_supported":  # REQUIRED yet empty here: authlib wants one; there is none
            getattr(metadata, f"validate_{key}")()
    assert document["issuer"] == url_issuer and document["token_endpoint"] == f"{url_issuer}{TOKEN}"

    # The password grant, as a public client ("none"), then refresh and revocation, all at the metadata's URLs.
    async with AsyncOAuth2Client(token_endpoint_auth_method="none", transport=transport) as public:
        token = await public.fetch_token(document["token_endpoint"], username=username, password=PASSWORD)
        claims = await verified(document, token["access_token"], transport)
        assert claims["sub"] == made.json()["id"] and claims["iss"] == url_issuer
        refreshed = await public.refresh_token(document["token_endpoint"], refresh_token=token["refresh_token"])
        assert refreshed["refresh_token"] != token["refresh_token"]
        revoked = await public.revoke_token(document["revocation_endpoint"], refreshed["refresh_token"])
        assert revoked.status_code == 200
    spent = await client.post(TOKEN, data={"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]})
    assert spent.status_code == 400 and spent.json()["error"] == "invalid_grant"


async def verified(document: dict[str, Any], access_token: str, transport: httpx.ASGITransport) -> dict[str, Any]:
    """The token checked with joserfc against the JWKS the metadata names, and its `iss` against the issuer."""
    async with httpx.AsyncClient(transport=transport) as http:
        keys = KeySet.import_key_set((await http.get(document["jwks_uri"])).json())
    decoded = jose_jwt.decode(access_token, keys, algorithms=document["access_token_signing_alg_values_supported"])
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": document["issuer"]}, aud={"essential": True, "value": "itsm"}
    ).validate(decoded.claims)
    return dict(decoded.claims)
