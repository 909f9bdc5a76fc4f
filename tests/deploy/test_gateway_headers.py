"""The gateway's security headers on every status it answers, and the content security policy of the docs pages
(gateway_support.py: `gateway` and `strict`)."""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest
from gateway_support import MIB, Gateway, assert_security_headers, until_429

pytestmark = pytest.mark.timeout(120)


def _unmatched_429(strict: Gateway) -> httpx.Response:
    # The catch-all router carries the API limit too; nothing else on `strict` uses its bucket.
    with strict.client("127.0.0.5") as client:
        responses, elapsed = until_429(lambda: client.get("/no-such-page"), limit=500)
    assert responses[-1].status_code == 429, f"no 429 in {len(responses)} requests in {elapsed:.1f}s"
    return responses[-1]


def _request(gw: Gateway, method: str, path: str, content: bytes | None = None) -> httpx.Response:
    with gw.client() as client:
        return client.request(method, path, content=content)


RESPONSES: dict[int, Callable[[Gateway, Gateway], httpx.Response]] = {
    200: lambda gw, strict: _request(gw, "GET", "/api/v1/incidents"),
    404: lambda gw, strict: _request(gw, "GET", "/nothing/here"),
    413: lambda gw, strict: _request(gw, "POST", "/api/v1/auth/users", b"x" * (MIB + 1)),
    429: lambda gw, strict: _unmatched_429(strict),
    503: lambda gw, strict: _request(gw, "GET", "/api/v1/audit/events"),
}


@pytest.mark.parametrize("status", sorted(RESPONSES))
def test_security_headers_on_every_status(gateway: Gateway, strict: Gateway, status: int) -> None:
    response = RESPONSES[status](gateway, strict)
    assert response.status_code == status
    assert_security_headers(response)


class _DocsPage(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.inline_scripts = 0
        self.styles: list[str] = []
        self.icons: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            if a.get("src"):
                self.scripts.append(a["src"] or "")
            else:
                self.inline_scripts += 1
        elif tag == "link" and a.get("rel") == "stylesheet":
            self.styles.append(a.get("href") or "")
        elif tag == "link" and "icon" in (a.get("rel") or ""):
            self.icons.append(a.get("href") or "")


def _csp(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "'self'"


def test_docs_csp_lets_our_swagger_ui_page_render_with_no_third_party_host(gateway: Gateway) -> None:
    # The stub serves the page the services serve (itsm_shared.docs): Swagger UI's files from the service itself.
    with gateway.client() as client:
        response = client.get("/api/v1/incidents/docs")
        api = client.get("/api/v1/incidents")
    assert_security_headers(response)
    csp = _csp(response.headers["content-security-policy"])
    page = _DocsPage()
    page.feed(response.text)
    assert page.scripts and page.styles and page.icons
    assert page.inline_scripts == 0  # Swagger UI is started by a file of its own
    for src in page.scripts:
        assert _origin(src) == "'self'" and src.startswith("/api/v1/incidents/docs/assets/"), src
    for href in page.styles + page.icons:
        assert _origin(href) == "'self'" and href.startswith("/api/v1/incidents/docs/assets/"), href
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert "data:" in csp["img-src"]  # swagger-ui's svg icons
    assert "'self'" in csp["connect-src"]  # openapi.json and the token endpoint, same origin
    # No third-party host anywhere: every source is a keyword ('self', 'none') or data:.
    sources = [s for directive, values in csp.items() if directive.endswith("-src") for s in values]
    assert all(s.startswith("'") or s == "data:" for s in sources), sources
    # The assets go through the docs route, under its policy.
    with gateway.client() as client:
        asset = client.get("/api/v1/incidents/docs/assets/swagger-ui-bundle.js")
    assert asset.headers["content-security-policy"] == response.headers["content-security-policy"]
    # JSON responses keep the strict policy.
    assert "unsafe-inline" not in api.headers["content-security-policy"]
    assert api.headers["content-security-policy"] != response.headers["content-security-policy"]
