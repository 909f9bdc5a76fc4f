"""Issue #12, point 6: the interactive docs as an integrator uses them, through the gateway.

Every service's OpenAPI document declares how to authenticate (OAuth2 password and client-credentials flows with
the token URL through the gateway, and bearer), on exactly the operations that refuse a request without a token.
Then a real headless browser (Debian's chromium, installed here when missing; driven by Playwright's Python package,
which downloads no browser of its own) opens the incident service's docs page through the gateway with no network
but loopback, under the gateway's CSP: Authorize logs the bootstrap admin in, and "Try it out" creates an incident.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import service_table as services
import stack as stack_module
from playwright.async_api import Browser, Route, async_playwright
from system_packages import debian_binary  # deploy/system_packages.py

from .conftest import bearer

TOKEN_URL = "/api/v1/auth/token"
SECURITY = [{"oauth2": []}, {"bearer": []}]
# Flags this machine's chromium needs, and no traffic of its own (updates, sync, field trials).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# ------------------------------------------------------------------------------------ the documents


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in {"get", "put", "post", "delete", "patch"}:
                yield method, path, operation


@pytest.mark.parametrize("service", services.names())
async def test_openapi_declares_how_to_authenticate_on_every_protected_operation(
    http: httpx.AsyncClient, stack: stack_module.Stack, service: str
) -> None:
    if service not in stack.services:
        pytest.skip(f"{service} is not built yet")
    prefix = services.get(service).api_prefix
    response = await http.get(f"{prefix}/openapi.json")
    assert response.status_code == 200
    document = response.json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["bearer"]["description"],
    }
    oauth2 = schemes["oauth2"]
    assert oauth2["type"] == "oauth2"
    assert oauth2["flows"]["password"]["tokenUrl"] == TOKEN_URL
    assert oauth2["flows"]["clientCredentials"]["tokenUrl"] == TOKEN_URL
    # The declaration says what the service does: an operation that answers 401 without a token declares both
    # schemes (either will do), and one that declares them answers 401 without a token.
    secured = 0
    for method, path, operation in operations(document):
        concrete = path.replace("{", "").replace("}", "")  # a path parameter's name as its value
        for name in [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]:
            concrete = concrete.replace(name, str(uuid.uuid4()))
        answer = await http.request(method.upper(), concrete)
        if "security" in operation:
            secured += 1
            assert operation["security"] == SECURITY, (method, path)
            assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
            assert answer.headers["www-authenticate"].startswith("Bearer"), (method, path)
        else:
            assert answer.status_code != 401, (method, path, "refuses a request without a token but declares none")
    assert secured, f"{service} declares no protected operation"


# ------------------------------------------------------------------------------------ the browser


def system_chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (the test runs as root on a fresh machine)."""
    try:
        return debian_binary("chromium")
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def dead_port() -> Iterator[int]:
    """A port bound but never listening: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
async def browser(dead_port: int) -> AsyncIterator[Browser]:
    executable = system_chromium()
    # Everything but loopback goes to a proxy that refuses connections (chromium never proxies loopback), and no
    # host name resolves but localhost: the browser has no network but loopback, whatever Playwright's routes see.
    no_network = [
        f"--proxy-server=http://127.0.0.1:{dead_port}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    ]
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS + no_network
        )
        try:
            yield launched
        finally:
            await launched.close()


def loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https", "ws", "wss"}:
        return True  # data:, blob:, about: never leave the browser
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.mark.timeout(900)  # a fresh machine installs chromium first
async def test_swagger_ui_logs_in_and_creates_an_incident_offline(
    browser: Browser, gateway: str, http: httpx.AsyncClient, stack: stack_module.Stack, admin: str
) -> None:
    context = await browser.new_context(base_url=gateway)
    off_machine: list[str] = []

    async def only_loopback(route: Route) -> None:
        if loopback(route.request.url):
            await route.continue_()
        else:
            off_machine.append(route.request.url)
            await route.abort("blockedbyclient")

    await context.route("**/*", only_loopback)
    await context.add_init_script(
        "window.__cspViolations = [];"
        "document.addEventListener('securitypolicyviolation', e =>"
        " window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));"
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    try:
        # The page and Swagger UI's files, all from the service through the gateway's docs route and its CSP.
        docs = await page.goto("/api/v1/incidents/docs")
        assert docs is not None and docs.status == 200
        csp = docs.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "http" not in csp and "unsafe-inline" not in csp, csp
        await page.locator(".opblock").first.wait_for(timeout=30_000)
        assert "ITSM incident" in await page.locator(".information-container .title").inner_text()

        # Authorize: the schemes the document declares, and the password flow with the bootstrap admin.
        await page.locator(".auth-wrapper button.authorize").click()
        dialog = page.locator(".dialog-ux .modal-ux")
        headings = await dialog.locator(".auth-container h4").all_inner_texts()
        assert any("password" in h for h in headings), headings
        assert any("clientCredentials" in h for h in headings), headings
        assert any("bearer" in h for h in headings), headings
        password_flow = dialog.locator(".auth-container", has=page.locator("h4", has_text="password"))
        await password_flow.locator("#oauth_username").fill("admin")
        password = stack.settings.bootstrap_admin_password
        assert password
        await password_flow.locator("#oauth_password").fill(password)
        async with page.expect_response(lambda r: urlsplit(r.url).path == TOKEN_URL) as login:
            await password_flow.locator("button.authorize").click()
        assert (await login.value).status == 200
        await password_flow.locator("h6", has_text="Authorized").wait_for()
        assert await password_flow.get_by_role("button", name="Remove authorization").inner_text() == "Logout"
        await dialog.locator("button.btn-done").first.click()

        # Try it out on POST /api/v1/incidents, with the token Swagger UI got.
        operation = page.locator(
            ".opblock.opblock-post", has=page.locator('.opblock-summary-path[data-path="/api/v1/incidents"]')
        )
        await operation.locator(".opblock-summary").click()
        await operation.locator("button.try-out__btn").click()
        title = f"Raised from Swagger UI {uuid.uuid4().hex[:8]}"
        body = {"title": title, "description": "through the docs page", "impact": 2, "urgency": 2}
        await operation.locator("textarea.body-param__text").fill(json.dumps(body))
        async with page.expect_response(
            lambda r: urlsplit(r.url).path == "/api/v1/incidents" and r.request.method == "POST"
        ) as creation:
            await operation.locator("button.execute").click()
        created = await creation.value
        sent = await created.request.all_headers()
        assert sent["authorization"].startswith("Bearer "), sent
        assert created.status == 201, await created.text()
        incident = await created.json()
        shown = operation.locator(".live-responses-table .response .response-col_status")
        await shown.first.wait_for()
        assert (await shown.first.inner_text()).strip() == "201"

        violations = await page.evaluate("window.__cspViolations")
    finally:
        await context.close()

    assert violations == [], violations
    assert problems == [], problems
    assert off_machine == [], f"the docs page asked for something off this machine: {off_machine}"

    # The incident exists, created by the admin Swagger UI logged in as.
    me = await http.get("/api/v1/auth/me", headers=bearer(admin))
    stored = await http.get(f"/api/v1/incidents/{incident['id']}", headers=bearer(admin))
    assert stored.status_code == 200, stored.text
    assert stored.json()["title"] == title
    assert stored.json()["created_by"] == me.json()["id"]
