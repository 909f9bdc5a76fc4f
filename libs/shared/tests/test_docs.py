"""The OpenAPI documents declare how to authenticate, and the docs pages need nothing but the service (issue #12,
point 6). No database or broker: the app is built, never started."""

from __future__ import annotations

from collections.abc import AsyncIterator
from html.parser import HTMLParser

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from itsm_shared.app import ServiceSpec, create_app
from itsm_shared.auth import TOKEN_URL, CurrentPrincipal, Role, TokenVerifier, require_roles
from itsm_shared.errors import PROBLEM_JSON
from itsm_shared.settings import ServiceSettings

PREFIX = "/api/v1/things"
SECURITY = [{"oauth2": []}, {"bearer": []}]

router = APIRouter(prefix=PREFIX)


@router.get("/mine")
async def mine(principal: CurrentPrincipal) -> dict[str, str]:
    return {"id": principal.actor}


@router.post("/admin", dependencies=[Depends(require_roles(Role.ADMIN))])
async def admin_only() -> None:
    return None


@router.get("/public")
async def public() -> dict[str, str]:
    return {"ok": "yes"}


@router.get("/{ref}")
async def record(ref: str) -> dict[str, str]:
    return {"ref": ref}


class NoKeys:
    async def key(self, kid: str) -> object:
        raise AssertionError("no token reaches the keys in these tests")


@pytest.fixture(scope="module")
def app() -> FastAPI:
    spec = ServiceSpec(
        name="things", title="ITSM things", api_prefix=PREFIX, routers=[router], settings=ServiceSettings()
    )
    application = create_app(spec)
    application.state.verifier = TokenVerifier(NoKeys(), issuer="itsm-auth", audience="itsm")  # type: ignore[arg-type]
    return application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shared.test") as c:
        yield c


async def test_security_schemes_are_declared_with_the_token_url_through_the_gateway(client: httpx.AsyncClient) -> None:
    document = (await client.get(f"{PREFIX}/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    oauth2 = schemes["oauth2"]
    assert oauth2["type"] == "oauth2"
    assert oauth2["flows"]["password"] == {"tokenUrl": TOKEN_URL, "refreshUrl": TOKEN_URL, "scopes": {}}
    assert oauth2["flows"]["clientCredentials"] == {"tokenUrl": TOKEN_URL, "scopes": {}}
    assert TOKEN_URL == "/api/v1/auth/token"
    assert {k: v for k, v in schemes["bearer"].items() if k != "description"} == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert document == (await client.get("/openapi.json")).json()


async def test_every_protected_operation_lists_both_schemes_and_no_other_does(client: httpx.AsyncClient) -> None:
    paths = (await client.get(f"{PREFIX}/openapi.json")).json()["paths"]
    assert paths[f"{PREFIX}/mine"]["get"]["security"] == SECURITY
    assert paths[f"{PREFIX}/admin"]["post"]["security"] == SECURITY
    assert "security" not in paths[f"{PREFIX}/public"]["get"]
    # Health and docs are not operations of the document.
    assert set(paths) == {f"{PREFIX}/mine", f"{PREFIX}/admin", f"{PREFIX}/public", f"{PREFIX}/{{ref}}"}


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (None, "invalid_request"),
        ("Basic YWRtaW46c2VjcmV0", "invalid_request"),
        ("Bearer", "invalid_request"),
        ("Bearer not-a-token", "invalid_token"),
    ],
)
async def test_the_declared_schemes_check_nothing_the_verification_still_does(
    client: httpx.AsyncClient, authorization: str | None, error: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.get(f"{PREFIX}/mine", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["WWW-Authenticate"] == f'Bearer error="{error}"'
    assert (await client.get(f"{PREFIX}/public", headers=headers)).status_code == 200


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self.openapi_url: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            if a.get("src"):
                self.urls.append(a["src"] or "")
            else:
                self.inline_scripts += 1
        elif tag == "link":
            self.urls.append(a.get("href") or "")
        elif a.get("id") == "swagger-ui":
            self.openapi_url = a.get("data-openapi-url")

    def handle_data(self, data: str) -> None:
        if self.lasttag == "script" and data.strip():
            self.inline_scripts += 1


@pytest.mark.parametrize(
    ("docs", "openapi"), [(f"{PREFIX}/docs", f"{PREFIX}/openapi.json"), ("/docs", "/openapi.json")]
)
async def test_docs_pages_load_everything_from_the_service(client: httpx.AsyncClient, docs: str, openapi: str) -> None:
    response = await client.get(docs)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "http" not in response.text.lower().replace("<!doctype html>", "")  # no URL of another host
    page = Page()
    page.feed(response.text)
    assert page.inline_scripts == 0
    assert page.openapi_url == openapi
    assert (await client.get(openapi)).status_code == 200
    assert sorted(page.urls) == sorted(
        f"{docs}/assets/{name}" for name in ("swagger-ui.css", "favicon.png", "swagger-ui-bundle.js", "swagger-init.js")
    )
    types = {}
    for url in page.urls:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        types[url.rsplit("/", 1)[1]] = asset.headers["content-type"].split(";")[0]
        if url.endswith("swagger-ui-bundle.js"):
            assert "SwaggerUIBundle" in asset.text[:2000]
        if url.endswith("swagger-init.js"):
            assert "dataset.openapiUrl" in asset.text and "validatorUrl: null" in asset.text
    assert types == {
        "swagger-ui.css": "text/css",
        "favicon.png": "image/png",
        "swagger-ui-bundle.js": "text/javascript",
        "swagger-init.js": "text/javascript",
    }
    missing = await client.get(f"{docs}/assets/redoc.standalone.js")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM_JSON
    assert (await client.get(f"{docs}/assets/..%2F..%2Fcore.py")).status_code == 404


async def test_the_docs_are_not_taken_for_a_record(client: httpx.AsyncClient) -> None:
    # The docs routes come before the service's, so `<prefix>/docs` is never a `{ref}`.
    assert (await client.get(f"{PREFIX}/docs")).headers["content-type"].startswith("text/html")
