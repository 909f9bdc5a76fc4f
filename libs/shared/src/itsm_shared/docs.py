"""The interactive docs (Swagger UI), served whole by the service itself: no CDN, so they work in a network with
no way out, and the docs' Content-Security-Policy names no host but the API's own.

The assets (`swagger-ui-bundle.js`, `swagger-ui.css`, the favicon) are the files the `fastapi-offline` package ships:
the very swagger-ui-dist 5 files FastAPI's own page loads from its CDN, re-released as swagger-ui moves. The page has
no inline script: Swagger UI is started by `swagger-init.js`, which reads the OpenAPI URL from the page, so the CSP
allows scripts from this origin only (`script-src 'self'`).

A page at `<base>/docs` loads its assets from `<base>/docs/assets/`: under a service's prefix
(`/api/v1/incidents/docs`), everything the page needs goes through the gateway's docs route.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from itsm_shared.errors import NotFound

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"

# name -> (file in fastapi-offline's static directory, media type)
ASSET_FILES = {
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
    "favicon.png": ("favicon.png", "image/png"),
}
INIT_SCRIPT_NAME = "swagger-init.js"

# FastAPI's Swagger UI settings (fastapi.openapi.docs), plus no call to swagger.io's online validator.
INIT_SCRIPT = """\
// Starts Swagger UI on this page: a file, not an inline script, so the docs' CSP allows this origin's scripts only.
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();
"""


def swagger_ui_html(*, title: str, openapi_url: str, assets_url: str) -> str:
    """The docs page: Swagger UI's css, bundle and start-up script from `assets_url`, the document at `openapi_url`."""
    title, openapi_url, assets = (html.escape(v, quote=True) for v in (title, openapi_url, assets_url.rstrip("/")))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" type="text/css" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/{INIT_SCRIPT_NAME}"></script>
</body>
</html>
"""


def docs_router(*, title: str, pages: dict[str, str]) -> APIRouter:
    """`GET <docs path>` (the page) and `GET <docs path>/assets/<name>` for each docs path, with its OpenAPI URL."""
    router = APIRouter(include_in_schema=False)
    for docs_path, openapi_url in pages.items():
        page = swagger_ui_html(title=title, openapi_url=openapi_url, assets_url=f"{docs_path}/assets")
        router.add_api_route(docs_path, _page(page), methods=["GET"], response_class=HTMLResponse)
        router.add_api_route(f"{docs_path}/assets/{{name}}", asset, methods=["GET"])
    return router


def _page(page: str) -> Callable[[], Awaitable[HTMLResponse]]:
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(page)

    return swagger_ui


async def asset(name: str) -> Response:
    if name == INIT_SCRIPT_NAME:
        return Response(INIT_SCRIPT, media_type="text/javascript; charset=utf-8")
    if name not in ASSET_FILES:
        raise NotFound(f"no docs asset {name!r}")
    filename, media_type = ASSET_FILES[name]
    return FileResponse(ASSETS_DIR / filename, media_type=media_type)
