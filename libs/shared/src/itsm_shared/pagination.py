"""Keyset pagination (CONTRACT §2): the cursor carries the last row's sort value and id, so page 1000
costs what page 1 costs, given an index on (sort column, id)."""

from __future__ import annotations

import base64
import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar
from uuid import UUID

from fastapi import Query, Response
from pydantic import BaseModel, BeforeValidator
from sqlalchemy import BigInteger, ColumnElement, Integer, SmallInteger, bindparam, tuple_

from itsm_shared.errors import Invalid
from itsm_shared.json_body import json_response

T = TypeVar("T")
MAX_LIMIT = 200


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def page_response(items: Sequence[BaseModel | Mapping[str, Any]], next_cursor: str | None) -> Response:
    """A page as JSON, serialized once: its items as models or as plain values in the model's shape (returned as
    a model, FastAPI would validate every item again against the route's response model, which still documents
    it)."""
    return json_response({"items": items, "next_cursor": next_cursor})


@dataclass(frozen=True)
class Sort:
    column: Any  # an InstrumentedAttribute
    descending: bool
    name: str


def parse_sort(value: str, allowed: dict[str, Any]) -> Sort:
    name = value.removeprefix("-").removeprefix("+")
    if name not in allowed:
        raise Invalid(
            f"cannot sort by {name!r}",
            errors=[{"loc": ["query", "sort"], "msg": f"one of {sorted(allowed)}"}],
        )
    return Sort(column=allowed[name], descending=value.startswith("-"), name=name)


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, UUID):
        return {"u": str(value)}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and "t" in value:
        return datetime.fromisoformat(value["t"])
    if isinstance(value, dict) and "u" in value:
        return UUID(value["u"])
    return value


def encode_cursor(sort: Sort, value: Any, row_id: UUID) -> str:
    raw = json.dumps({"s": sort.name, "d": sort.descending, "v": _encode_value(value), "id": str(row_id)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _as_column_value(value: Any, column: Any) -> Any:
    """The cursor comes from the client: a value its sort column cannot hold is refused here, as a 422, rather
    than reaching the database and failing there as a 500."""
    try:
        sa_type = column.type
        expected: type = sa_type.python_type
    except (AttributeError, NotImplementedError):
        return value  # nothing declared to check against
    if isinstance(value, bool) and expected is not bool:
        raise ValueError("cursor value has the wrong type")
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        return expected(value)
    if not isinstance(value, expected) and not (expected is float and isinstance(value, int)):
        raise ValueError("cursor value has the wrong type")
    if isinstance(value, int) and isinstance(sa_type, Integer):
        bits = 64 if isinstance(sa_type, BigInteger) else 16 if isinstance(sa_type, SmallInteger) else 32
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            raise ValueError("cursor value out of range")
    return value


def decode_cursor(cursor: str, sort: Sort) -> tuple[Any, UUID]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if raw["s"] != sort.name or raw["d"] != sort.descending:
            raise ValueError("cursor belongs to another sort order")
        return _as_column_value(_decode_value(raw["v"]), sort.column), UUID(raw["id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise Invalid("invalid cursor", errors=[{"loc": ["query", "cursor"], "msg": str(exc)}]) from exc


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid("limit out of range", errors=[{"loc": ["query", "limit"], "msg": f"1..{MAX_LIMIT}"}])
    return limit


S = TypeVar("S", bound=Any)
# The parameters of a page's statement (`keyset_statement`): the cursor's sort value and id, and the rows to fetch.
AFTER_VALUE, AFTER_ID, PAGE_LIMIT = "page_after_value", "page_after_id", "page_limit"


def keyset(stmt: S, sort: Sort, id_column: Any, limit: int, cursor: str | None) -> S:
    """Order by (sort column, id) and start after the cursor; fetches one extra row to detect a next page.

    The cursor condition is a row comparison, `(col, id) > (value, last_id)`, which PostgreSQL turns into an
    index range on (col, id): a page deep in the list costs what the first one does. Sort columns are NOT NULL.
    """
    return keyset_statement(stmt, sort, id_column, after=cursor is not None, values=keyset_values(sort, limit, cursor))


def keyset_statement(stmt: S, sort: Sort, id_column: Any, *, after: bool, values: Mapping[str, Any] | None = None) -> S:
    """`keyset`'s statement with its parameters named (AFTER_VALUE and AFTER_ID when `after` a cursor, PAGE_LIMIT):
    bound to `values`, or left for the caller to pass at each run (`keyset_values`) of a statement compiled once."""

    def parameter(name: str, type_: Any) -> Any:
        return bindparam(name, type_=type_) if values is None else bindparam(name, values[name], type_=type_)

    if after:
        row = tuple_(sort.column, id_column)
        bound = tuple_(parameter(AFTER_VALUE, sort.column.type), parameter(AFTER_ID, id_column.type))
        condition: ColumnElement[bool] = row < bound if sort.descending else row > bound
        stmt = stmt.where(condition)
    order = (sort.column.desc(), id_column.desc()) if sort.descending else (sort.column.asc(), id_column.asc())
    ordered: S = stmt.order_by(*order).limit(parameter(PAGE_LIMIT, Integer()))
    return ordered


def keyset_values(sort: Sort, limit: int, cursor: str | None) -> dict[str, Any]:
    """The parameters of `keyset_statement` for a page: 422 for a cursor or a limit out of bounds."""
    values: dict[str, Any] = {PAGE_LIMIT: check_limit(limit) + 1}
    if cursor:
        values[AFTER_VALUE], values[AFTER_ID] = decode_cursor(cursor, sort)
    return values


def page_of(rows: Sequence[T], sort: Sort, limit: int, *, value_of: Any, id_of: Any) -> tuple[list[T], str | None]:
    items = list(rows[:limit])
    if len(rows) > limit and items:
        last = items[-1]
        return items, encode_cursor(sort, value_of(last), id_of(last))
    return items, None


def _split(value: Any) -> Any:
    if value is None:
        return None
    return [v for item in (value if isinstance(value, list) else [value]) for v in str(item).split(",") if v]


# A multi-valued filter, repeated or comma-separated (`?status=new&status=assessed` or `?status=new,assessed`),
# typed and validated by FastAPI (422 naming the value): `status: Annotated[list[Status] | None, Query(),
# CommaSeparated] = None`.
CommaSeparated = BeforeValidator(_split)
# The page size every list takes.
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
# The `next_cursor` of the previous page, as issued (URL-safe base64 of the last row's sort value and id): any
# other value is 422.
Cursor = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9_-]+$",
        max_length=1000,
        description="`next_cursor` of the previous page, as it was given (an opaque token)",
    ),
]


def sort_by(allowed: Iterable[str]) -> Any:
    """The `sort` query parameter of a list: one of `allowed`, `-` first for descending (`parse_sort` reads it).
    `sort: Annotated[str, sort_by(SORTS)] = "-created_at"`."""
    names = sorted(allowed)
    return Query(
        pattern=f"^[-+]?({'|'.join(re.escape(n) for n in names)})$",
        json_schema_extra={"enum": [f"{sign}{n}" for n in names for sign in ("", "-", "+")]},
        description="the field to sort by, `-` first for descending",
    )
