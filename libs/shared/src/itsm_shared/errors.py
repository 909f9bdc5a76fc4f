"""Domain errors that carry their HTTP status, rendered as RFC 9457 problem+json by one handler."""

from __future__ import annotations

import logging
from typing import Any

from asyncpg.exceptions import PostgresError
from asyncpg.exceptions._base import DataError as ParameterError
from asyncpg.exceptions._base import InterfaceError as DriverInterfaceError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class DomainError(Exception):
    status = 400
    title = "Bad request"
    type_slug = "bad-request"
    # The use case's writes stand although the request is refused (a failed login is counted): the transaction
    # seam commits instead of rolling back.
    keeps_writes = False

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}


class Unauthorized(DomainError):
    status, title, type_slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str = "missing or invalid bearer token", *, error: str = "invalid_token") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": f'Bearer error="{error}"'})


class Forbidden(DomainError):
    status, title, type_slug = 403, "Forbidden", "forbidden"


class NotFound(DomainError):
    status, title, type_slug = 404, "Not found", "not-found"


class Conflict(DomainError):
    status, title, type_slug = 409, "Conflict", "conflict"


class PreconditionFailed(DomainError):
    status, title, type_slug = 412, "Precondition failed", "precondition-failed"


class Invalid(DomainError):
    """A well-formed request the rules refuse (read-only field, bad reference, reused idempotency key)."""

    status, title, type_slug = 422, "Unprocessable content", "validation-error"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail, extra={"errors": errors or []})


class Unavailable(DomainError):
    status, title, type_slug = 503, "Service unavailable", "unavailable"

    def __init__(self, detail: str = "a dependency is unavailable, retry later") -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    type_slug: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://itsm.example/problems/{type_slug}",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _loc(loc: tuple[int | str, ...] | list[int | str]) -> list[int | str]:
    return list(loc)


def install_error_handlers(app: FastAPI) -> None:
    async def domain(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DomainError)
        return problem(exc.status, exc.title, exc.detail, type_slug=exc.type_slug, headers=exc.headers, **exc.extra)

    async def validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": _loc(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return problem(
            422,
            "Unprocessable content",
            "the request is invalid",
            type_slug="validation-error",
            errors=errors,
        )

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return problem(
            exc.status_code, _title(exc.status_code), str(exc.detail), type_slug="http-error", headers=headers
        )

    async def database_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("database unavailable: %s", type(exc).__name__)
        return problem(
            503,
            "Service unavailable",
            "the database is unavailable, retry later",
            type_slug="unavailable",
            headers={"Retry-After": "5"},
        )

    async def data_error(_: Request, exc: Exception) -> JSONResponse:
        # The value, the statement and its parameters stay out of the answer and out of the log.
        log.info("database refused a value of the request: %s", _sqlstate(exc) or type(exc).__name__)
        return problem(
            422,
            "Unprocessable content",
            "a value of the request is out of range or malformed",
            type_slug="validation-error",
            errors=[],
        )

    async def unhandled(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem(500, "Internal server error", "an unexpected error occurred", type_slug="internal")

    app.add_exception_handler(DomainError, domain)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    for down_type in (ConnectionError, OSError):
        app.add_exception_handler(down_type, database_down)
    for dbapi_type in (OperationalError, InterfaceError):
        app.add_exception_handler(dbapi_type, _dbapi(database_down, data_error, database_down))
    app.add_exception_handler(DBAPIError, _dbapi(database_down, data_error, unhandled))
    # The same failures raised by asyncpg itself, on the hot paths that run their statements on the driver's
    # connection (db.driver_connection): sorted as SQLAlchemy's are.
    for driver_type in (PostgresError, DriverInterfaceError):
        app.add_exception_handler(driver_type, _dbapi(database_down, data_error, unhandled))
    app.add_exception_handler(Exception, unhandled)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path. Starlette's 405 names only the methods of the first
    route matching the path, while FastAPI makes one route per method (GET and PATCH of `/{ref}` are two)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def caused_by_input(exc: Exception) -> bool:
    """A data exception (SQLSTATE class 22: a value out of its type's range, malformed, too long for its
    column) or a parameter the driver could not encode (an integer beyond int4 or int8): the request's fault.
    `exc`: SQLAlchemy's error, or the driver's own."""
    error: BaseException | None = exc.orig if isinstance(exc, DBAPIError) else exc
    for _ in range(5):  # the driver's error, then what it wraps
        if error is None:
            break
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(error, ParameterError) or (isinstance(sqlstate, str) and sqlstate.startswith("22")):
            return True
        error = error.__cause__
    return False


def _sqlstate(exc: Exception) -> str | None:
    sqlstate = getattr(exc.orig if isinstance(exc, DBAPIError) else exc, "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) else None


# SQLSTATE classes of a failure that is the moment's, not the request's: the connection (08), a deadlock or a
# serialization failure (40), the server out of resources (53), shutting down or starting up (57P01-03).
TRANSIENT_SQLSTATES = ("08", "40", "53", "57P01", "57P02", "57P03")


def database_unavailable(exc: Exception) -> bool:
    """The database is away or busy for now (a 503 and a retry later, never a 500): the connection was lost
    (asyncpg's failures surface in SQLAlchemy with `connection_invalidated`; on the driver's own connection as
    its "connection is closed", the test SQLAlchemy's asyncpg dialect makes too), or the server answered with a
    transient SQLSTATE."""
    lost = (
        exc.connection_invalidated
        if isinstance(exc, DBAPIError)
        else isinstance(exc, DriverInterfaceError) and "connection is closed" in str(exc)
    )
    return lost or (_sqlstate(exc) or "").startswith(TRANSIENT_SQLSTATES)


def _dbapi(down: Any, data: Any, other: Any) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        if caused_by_input(exc):
            result: JSONResponse = await data(request, exc)
        elif database_unavailable(exc):
            result = await down(request, exc)
        else:
            result = await other(request, exc)
        return result

    return handler


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
