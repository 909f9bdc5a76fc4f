"""JSON logs with a correlation id, Prometheus metrics, and the health endpoints."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CORRELATION_HEADER = "X-Correlation-ID"
CORRELATION_HEADER_BYTES = CORRELATION_HEADER.lower().encode()
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

HTTP_REQUESTS = Counter("itsm_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram("itsm_http_request_seconds", "HTTP request latency", ["method", "route"])

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def current_correlation_id() -> str:
    """The request's correlation id, or a new one for work that starts on its own (schedulers, sweeps)."""
    return correlation_id.get() or str(uuid.uuid4())


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid:
            out["correlation_id"] = cid
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream"):
        logger = logging.getLogger(name)
        if not logger.handlers and not logger.propagate:
            # Turned off (uvicorn's --no-access-log): it stays off. uvicorn writes an access line whenever the
            # logger has a handler, its parents' included, so propagating would turn it back on.
            continue
        logger.handlers[:] = []
        logger.propagate = True


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
