"""RFC 8414 authorization server metadata, served at `/.well-known/oauth-authorization-server` (routed to this
service by the gateway).

The issuer is one value: the `iss` of every access token and the metadata's `issuer` (RFC 8414 §3.3, RFC 9068
§2.2), ITSM_JWT_ISSUER. Deployments set it to the gateway's public URL (`make run` and the test stacks to their
gateway, compose to ITSM_JWT_ISSUER, the Helm chart from `gateway.publicUrl` or its host), so that the metadata is
found where RFC 8414 §3.1 derives it from the issuer, and the endpoints are that URL plus their paths. The default,
`itsm-auth`, is no URL: the metadata then names the endpoints at the address the request came to (README, Auth)."""

from __future__ import annotations

from urllib.parse import urlsplit

from auth.config import AuthSettings
from auth.schemas import ServerMetadata
from auth.tokens import CLIENT_AUTH_METHODS, GRANT_TYPES

WELL_KNOWN_PATH = "/.well-known/oauth-authorization-server"
API_PREFIX = "/api/v1/auth"
SIGNING_ALGORITHMS = ("EdDSA",)


def issuer_is_url(issuer: str) -> bool:
    """An issuer RFC 8414 can derive a metadata URL from: http(s), a host, no query or fragment."""
    parts = urlsplit(issuer)
    return parts.scheme in {"https", "http"} and bool(parts.netloc) and not parts.query and not parts.fragment


def server_metadata(settings: AuthSettings, request_base_url: str) -> ServerMetadata:
    """The metadata document; `request_base_url` (what the client called) only when the issuer is no URL."""
    issuer = settings.jwt_issuer
    base = (issuer if issuer_is_url(issuer) else request_base_url).rstrip("/")
    api = f"{base}{API_PREFIX}"
    return ServerMetadata(
        issuer=issuer,
        token_endpoint=f"{api}/token",
        revocation_endpoint=f"{api}/revoke",
        jwks_uri=f"{api}/jwks.json",
        grant_types_supported=list(GRANT_TYPES),
        response_types_supported=[],
        token_endpoint_auth_methods_supported=list(CLIENT_AUTH_METHODS),
        revocation_endpoint_auth_methods_supported=["none"],
        access_token_signing_alg_values_supported=list(SIGNING_ALGORITHMS),
        service_documentation=f"{api}/docs",
    )
