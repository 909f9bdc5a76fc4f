"""What every operation can answer, in the OpenAPI document, so typed clients generated from it understand every
real response: the RFC 9457 errors the shared handlers render (errors.py), the gateway's own answers, and the
ETag and Location headers of the operations that set them.

Most of it follows from the operation itself and is added to every service's document by `describe_responses`
(installed with the error handlers): 401/403 where a token is required, 404 where the path names a record, 422
(and 400 for a body that cannot be parsed) where there is input, 409 where an Idempotency-Key is taken, and on
every operation the gateway's 429 (rate limit, in-flight cap) and 503 (service or database away) and, with a
body, its 413 (1 MiB). What cannot be seen from the operation is declared on the route with `documented(...)`:
`@router.patch("/{ref}", responses=documented(etag=200, if_match=True, conflict="..."))`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security.base import SecurityBase

from itsm_shared.errors import PROBLEM_JSON

Call = TypeVar("Call", bound=Callable[..., Any])

# RFC 9457 §3: the members every problem of ours has, and the `errors` extension of validation problems.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem: what went wrong, for people (`title`, `detail`) and programs (`type`).",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri", "description": "identifies the kind of problem"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "validation problems: each refused value, where it was (`loc`) and why (`msg`)",
            "items": {
                "type": "object",
                "required": ["loc", "msg"],
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                },
            },
        },
        "error": {"type": "string", "description": "OAuth 2.0 error code (RFC 6749 §5.2), token endpoint only"},
        "error_description": {"type": "string"},
    },
    "additionalProperties": True,
}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": PROBLEM_REF}}
# What Traefik writes itself (rate limit, in-flight cap, body limit, no server): a short text/plain reason.
GATEWAY_CONTENT = {"text/plain": {"schema": {"type": "string"}}}

ETAG_HEADER = {
    "description": 'the version of the record, `"<version>"`: send it back in If-Match to update only that version',
    "required": True,
    "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
}
LOCATION_HEADER = {
    "description": "the path of the new resource",
    "required": True,
    "schema": {"type": "string"},
}
RETRY_AFTER_HEADER = {"description": "seconds to wait before retrying", "schema": {"type": "string"}}

# The generic answers, by status, with what they mean on any operation.
DESCRIPTIONS = {
    400: "The request could not be parsed: by the gateway (a malformed request line or header, text/plain), or by the"
    " service (a body that is not what the Content-Type says)",
    401: "No valid bearer token (missing, expired, revoked, or signed by an unknown key)",
    403: "The token's roles do not allow this",
    404: "No such record, or not one the caller may see",
    409: "Conflict with the record's state, or a request with the same Idempotency-Key is still in flight",
    412: "If-Match names another version than the record's current one",
    413: "The body is larger than the gateway accepts (1 MiB): the gateway's short plain-text answer, without a"
    " Content-Type",
    422: "The request is invalid: `errors` names each refused value",
    429: "Too many requests from this client (the gateway's rate limit or in-flight cap); retry later",
    503: "The service or its database is unavailable; retry later",
}
# The extension of a 422 response listing its rules: {"body.parent_id": "an existing incident"}.
RULES = "x-rules"
# Rules of the shared parameters, on every operation that has them.
CURSOR_RULE = "only a `next_cursor` the list gave (for the same sort order) is a valid cursor"
IDEMPOTENCY_RULE = "a key already used by the caller within 24 hours, with another body, is refused"
# Where a request body as a whole is refused (RequestBody): loc ["body"].
BODY_RULE = "no string may hold U+0000 (PostgreSQL text cannot)"
METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})
IDEMPOTENCY_HEADER = "idempotency-key"


def documented(
    *,
    etag: int | None = None,
    location: int | None = None,
    if_match: bool = False,
    conflict: str | None = None,
    more: Mapping[int, str] | None = None,
    rules: Mapping[str, str] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """The responses of one operation that its signature does not show: `etag` and `location` name the success
    status whose answer carries that header, `if_match` adds the 412 of a failed If-Match, `conflict` says what a
    409 means here, `more` adds other answers ({status: description}). `rules` are the checks of a value no JSON
    Schema can state (another field, another record, the record's state), by where the value is (`body.parent_id`,
    `query.end`): their 422 names that place, and the document lists them under the 422's `x-rules`."""
    responses: dict[int | str, dict[str, Any]] = {}
    if rules:
        responses[422] = {"description": DESCRIPTIONS[422], RULES: dict(rules)}
    for status, header, value in ((etag, "ETag", ETAG_HEADER), (location, "Location", LOCATION_HEADER)):
        if status is not None:
            responses.setdefault(status, {}).setdefault("headers", {})[header] = value
    if if_match:
        responses[412] = {"description": DESCRIPTIONS[412]}
    if conflict:
        responses[409] = {"description": conflict}
    for status, description in (more or {}).items():
        responses[status] = {"description": description}
    return responses


# The dependencies that verify a token, with the security schemes the document shows for them (`secured_by`).
_SECURED: dict[Callable[..., Any], tuple[SecurityBase, ...]] = {}


def secured_by(*schemes: SecurityBase) -> Callable[[Call], Call]:
    """Marks a dependency that reads and verifies the credentials itself: every operation depending on it
    (directly or through other dependencies) lists `schemes` as its security, any one of them will do, and the
    document declares them. FastAPI would do the same for schemes declared as the dependency's own
    sub-dependencies, but would also solve them on every request, for nothing (27 µs per request for two)."""

    def mark(call: Call) -> Call:
        _SECURED[call] = schemes
        return call

    return mark


def describe_responses(app: FastAPI) -> None:
    """Every operation of `app`'s document gets its security (`secured_by`) and the answers it can give (the
    module's docstring)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            secure(app, document)
            complete(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def secure(app: FastAPI, document: dict[str, Any]) -> None:
    """The security of each operation whose route depends on a `secured_by` dependency, and its schemes."""
    for route in iter_route_contexts(app.routes):  # as FastAPI walks them for the document, included routers too
        if not isinstance(route.original_route, APIRoute) or not (schemes := _schemes_of(route.dependant)):
            continue
        for scheme in schemes:
            declared = document.setdefault("components", {}).setdefault("securitySchemes", {})
            declared[scheme.scheme_name] = jsonable_encoder(scheme.model, by_alias=True, exclude_none=True)
        operations = document.get("paths", {}).get(route.path_format, {})
        for method in route.methods or ():
            if (operation := operations.get(method.lower())) is not None:
                operation["security"] = [{scheme.scheme_name: []} for scheme in schemes]


def _schemes_of(dependant: Dependant) -> tuple[SecurityBase, ...]:
    for dependency in dependant.dependencies:
        if dependency.call in _SECURED:
            return _SECURED[dependency.call]
        if schemes := _schemes_of(dependency):
            return schemes
    return ()


def complete(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for item in document.get("paths", {}).values():
        for method, operation in item.items():
            if method in METHODS:
                _complete_operation(operation)
    # FastAPI's own 422 shapes, replaced by Problem everywhere.
    if "HTTPValidationError" in schemas and not _refers(document.get("paths", {}), "HTTPValidationError"):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return document


def _complete_operation(operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    parameters: list[dict[str, Any]] = operation.get("parameters", [])
    has_body = "requestBody" in operation
    generic: list[int] = []
    if operation.get("security"):
        generic += [401, 403]
    if any(p.get("in") == "path" for p in parameters):
        generic.append(404)
    if parameters or has_body:
        generic.append(422)
    generic.append(400)
    if has_body:
        generic.append(413)
    if any(p.get("in") == "header" and p.get("name", "").lower() == IDEMPOTENCY_HEADER for p in parameters):
        generic.append(409)
    generic += [429, 503]
    for status in generic:
        responses.setdefault(str(status), {"description": DESCRIPTIONS[status]})
    shared_rules = {
        f"{p['in']}.{p['name']}": rule
        for p in parameters
        if (rule := {"cursor": CURSOR_RULE, IDEMPOTENCY_HEADER: IDEMPOTENCY_RULE}.get(p.get("name", "").lower()))
    }
    if has_body and "application/json" in operation["requestBody"].get("content", {}):
        shared_rules["body"] = BODY_RULE
    if shared_rules or RULES in responses.get("422", {}):
        invalid = responses.setdefault("422", {"description": DESCRIPTIONS[422]})
        invalid[RULES] = {**shared_rules, **invalid.get(RULES, {})}
        invalid["description"] = (
            DESCRIPTIONS[422]
            + ". Besides the schema, the rules of `x-rules`: "
            + "; ".join(f"`{where}`: {rule}" for where, rule in invalid[RULES].items())
        )
    operation["responses"] = responses = dict(sorted(responses.items()))
    for key, response in responses.items():
        if not key.isdigit() or int(key) < 400:
            continue
        status = int(key)
        if status == 422 and _is_fastapi_default(response):
            response["description"] = DESCRIPTIONS[422]
        if status == 413:
            response.pop("content", None)
        elif status == 429:
            response["content"] = dict(GATEWAY_CONTENT)
        elif status in (400, 503):
            response["content"] = {**PROBLEM_CONTENT, **GATEWAY_CONTENT}
        else:
            response["content"] = dict(PROBLEM_CONTENT)
        if status in (429, 503):
            response.setdefault("headers", {})["Retry-After"] = RETRY_AFTER_HEADER
        if status == 401:
            response.setdefault("headers", {})["WWW-Authenticate"] = {
                "description": "the authentication scheme expected, and why the credentials were refused",
                "schema": {"type": "string"},
            }


def _is_fastapi_default(response: Mapping[str, Any]) -> bool:
    return response.get("description") == "Validation Error"


def _refers(value: Any, name: str) -> bool:
    if isinstance(value, dict):
        return any(_refers(v, name) for v in value.values()) or value.get("$ref") == f"#/components/schemas/{name}"
    if isinstance(value, list):
        return any(_refers(v, name) for v in value)
    return False
