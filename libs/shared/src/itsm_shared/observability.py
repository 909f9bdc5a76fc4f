"""The correlation id of each request (logs: itsm_shared.logs), Prometheus metrics, and the health endpoints."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from itsm_shared.logs import correlation_id

CORRELATION_HEADER = "X-Correlation-ID"
CORRELATION_HEADER_BYTES = CORRELATION_HEADER.lower().encode()

HTTP_REQUESTS = Counter("itsm_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram("itsm_http_request_seconds", "HTTP request latency", ["method", "route"])


class RequestContext:
    """Correlation id (taken from `X-Correlation-ID` or made, set for logs and events, echoed in the response) and
    per-route metrics. Plain ASGI middleware: Starlette's BaseHTTPMiddleware costs a task and a stream per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == CORRELATION_HEADER_BYTES:
                incoming = value.decode("latin-1")
                break
        cid = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else str(uuid.uuid4())
        token = correlation_id.set(cid)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (CORRELATION_HEADER_BYTES, cid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            HTTP_REQUESTS.labels(method, path, str(status)).inc()
            HTTP_LATENCY.labels(method, path).observe(time.perf_counter() - start)
            correlation_id.reset(token)


def install_request_context(app: FastAPI) -> None:
    app.add_middleware(RequestContext)


ReadinessCheck = Callable[[], Awaitable[None]]


def health_router(checks: dict[str, ReadinessCheck]) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await check()
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"unavailable: {type(exc).__name__}"
        ok = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": results}, status_code=200 if ok else 503
        )

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
