"""Who sees which incident, and the incident as it is read: one, a page of a list, its notes and history."""

from __future__ import annotations

import collections
import functools
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from itsm_shared.auth import Principal, Role
from itsm_shared.db import read_connection
from itsm_shared.errors import Forbidden, NotFound
from itsm_shared.pagination import Sort, keyset_statement, keyset_values, page_of
from itsm_shared.schemas import HistoryRead, Transition
from sqlalchemy import ColumnElement, func
from sqlalchemy.dialects.postgresql import ARRAY, asyncpg
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from incident import sla
from incident.lifecycle import MACHINE
from incident.models import INCIDENTS, ClockKind, Incident, IncidentNote, SlaClock, Visibility
from incident.schemas import IncidentRead

WORKERS = frozenset({Role.AGENT, Role.ADMIN})
READ_FIELDS = tuple(name for name in IncidentRead.model_fields if name != "sla")
INCIDENT_TABLE: sa.Table = Incident.__table__  # type: ignore[attr-defined]
CLOCK_TABLE: sa.Table = SlaClock.__table__  # type: ignore[attr-defined]
LISTED = [INCIDENT_TABLE.c[name] for name in READ_FIELDS]
# What a listed clock's view reads (sla.view, sla.elapsed) and nothing else: a timestamp costs asyncpg about 2 us to
# decode, and a running clock's warning_at and next_fire_at, which no view shows, were 200 of a page's 500 (the
# clocks' fetch of a page of 50: 1.10 -> 0.76 ms of client CPU, medians of 6 alternated runs). Its calendar and
# pauses as their stored text: the parsed calendar is cached by that text (sla.calendar_of), and the pauses, most
# often none, are parsed only when there are some.
LISTED_CLOCK_FIELDS = (
    "incident_id", "kind", "target_seconds", "calendar", "state", "started_at", "pauses", "due_at", "stopped_at",
    "breached",
)  # fmt: skip
CLOCK_COLUMNS = [
    sa.cast(CLOCK_TABLE.c[name], sa.Text).label(name) if name in ("calendar", "pauses") else CLOCK_TABLE.c[name]
    for name in LISTED_CLOCK_FIELDS
]
# A listed clock as a named tuple: the SLA views read a dozen fields of each, and a Row's attribute costs 0.2 µs
# where a named tuple's costs 0.03 (a page of 50 incidents rendered in 0.54 ms instead of 0.89).
ListedClock = collections.namedtuple("ListedClock", [c.name for c in CLOCK_COLUMNS])  # type: ignore[misc]
# The clocks of a page's incidents: one array parameter, so one statement (prepared once) whatever the page's size.
PAGE_CLOCKS = sa.select(*CLOCK_COLUMNS).where(
    CLOCK_TABLE.c.incident_id == sa.any_(sa.bindparam("ids", type_=ARRAY(CLOCK_TABLE.c.incident_id.type)))
)
# ... run on the driver's connection: its records are read once into named tuples, where SQLAlchemy would first build
# a Row per clock (two per incident).
PAGE_CLOCKS_SQL = str(PAGE_CLOCKS.compile(dialect=asyncpg.dialect()))  # type: ignore[no-untyped-call]
READERS = WORKERS | {Role.AUDITOR, Role.PROBLEM_MANAGER, Role.CHANGE_MANAGER, Role.CAB_MEMBER}


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- access


def is_requester_only(principal: Principal) -> bool:
    return not principal.has(*READERS)


def require_worker(principal: Principal) -> None:
    if not principal.has(*WORKERS):
        raise Forbidden("only agents and admins change incidents")


def _visible_to(principal: Principal) -> list[ColumnElement[bool]]:
    """What limits the incidents a principal sees: not deleted, and a requester's own."""
    if is_requester_only(principal) and not principal.has(Role.REQUESTER):
        raise NotFound("no such incident")
    return _visibility(is_requester_only(principal), principal.id)


def _visibility(requester_only: bool, caller: Any) -> list[ColumnElement[bool]]:
    """Not deleted, and for a requester only their own (`caller`: their id, or a parameter for it)."""
    where: list[ColumnElement[bool]] = [col(Incident.deleted_at).is_(None)]
    if requester_only:
        where.append(col(Incident.caller_id) == caller)
    return where


async def visible(session: AsyncSession, ref: str, principal: Principal, *, for_update: bool = False) -> Incident:
    """The incident by id or number, if this principal may see it; otherwise 404 (never 403: no leaks)."""
    return await INCIDENTS.load(session, ref, for_update=for_update, where=_visible_to(principal))


# ---------------------------------------------------------------- reading


async def clocks_of(
    session: AsyncSession, ids: Sequence[uuid.UUID], *, lock: bool = False
) -> dict[uuid.UUID, dict[str, SlaClock]]:
    stmt = select(SlaClock).where(col(SlaClock.incident_id).in_(ids))
    if lock:
        # Re-read what the session may already hold: the lock is only worth the state it reads.
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    result: dict[uuid.UUID, dict[str, SlaClock]] = {i: {} for i in ids}
    for clock in (await session.exec(stmt)).all():
        result[clock.incident_id][clock.kind] = clock
    return result


def render(incident: Incident, clocks: Mapping[str, sla.Clock], now: datetime | None = None) -> IncidentRead:
    values = shown(incident.model_dump(exclude={"search", "deleted_at", "sla_breached"}), clocks, now)
    return IncidentRead.model_validate(values)


def shown(values: Mapping[Any, Any], clocks: Mapping[str, sla.Clock], now: datetime | None = None) -> dict[str, Any]:
    """An incident as the API shows it (IncidentRead's fields, in its order), as plain values from its stored ones
    (a row or a model's dump) and its clocks: lists and creates encode these straight to JSON (json_body), as
    building models for them cost more than the rest of the request."""
    now = now or utcnow()
    views = {kind: sla.view(clock, now) for kind, clock in clocks.items()}
    response, resolution = views.get(ClockKind.RESPONSE), views.get(ClockKind.RESOLUTION)
    shown_sla = {
        "response_due": response["due_at"] if response else None,
        "resolution_due": resolution["due_at"] if resolution else None,
        "breached": any(v["breached"] for v in views.values()),
        "response": response,
        "resolution": resolution,
    }
    shown_values = {name: values[name] for name in _BEFORE_SLA}
    shown_values["sla"] = shown_sla
    for name in _AFTER_SLA:
        shown_values[name] = values[name]
    return shown_values


# IncidentRead's fields before and after `sla`, in its order (the order of the JSON a client reads).
_BEFORE_SLA = READ_FIELDS[: tuple(IncidentRead.model_fields).index("sla")]
_AFTER_SLA = READ_FIELDS[len(_BEFORE_SLA) :]


async def read(session: AsyncSession, incident: Incident) -> IncidentRead:
    return render(incident, (await clocks_of(session, [incident.id]))[incident.id])


SORTS = {
    "created_at": Incident.created_at,
    "updated_at": Incident.updated_at,
    "priority": Incident.priority,
    "number": Incident.number,
}
EQUALITY_FILTERS = (
    "priority",
    "assignee_id",
    "assignment_group",
    "category",
    "caller_id",
    "problem_id",
    "sla_breached",
)
RANGE_AND_TEXT_FILTERS = ("created_after", "created_before", "q")


async def list_incidents(
    session: AsyncSession,
    principal: Principal,
    *,
    sort: Sort,
    limit: int,
    cursor: str | None,
    filters: dict[str, Any],
) -> tuple[list[dict[str, Any]], str | None]:
    sql, arguments = page_statement(principal, sort=sort, limit=limit, cursor=cursor, filters=filters)
    # Rows, not ORM objects, on the driver's connection: a page is read, never changed.
    driver: Any = (await (await read_connection(session)).get_raw_connection()).driver_connection
    records = await driver.fetch(sql, *arguments)
    items, next_cursor = page_of(records, sort, limit, value_of=lambda r: r[sort.name], id_of=lambda r: r["id"])
    # Plain values from here on: a record's lookup by name costs several times a dict's or a named tuple's.
    page = [dict(zip(READ_FIELDS, r, strict=True)) for r in items]
    clocks: dict[uuid.UUID, dict[str, Any]] = {values["id"]: {} for values in page}
    if items:
        for row in await driver.fetch(PAGE_CLOCKS_SQL, list(clocks)):
            clock: Any = ListedClock._make(row)
            clocks[clock.incident_id][clock.kind] = clock
    now = utcnow()
    return [shown(values, clocks[values["id"]], now) for values in page], next_cursor


def page_statement(
    principal: Principal, *, sort: Sort, limit: int, cursor: str | None, filters: Mapping[str, Any]
) -> tuple[str, list[Any]]:
    """The SQL of a page of the list and its arguments, for the driver: the statement is built and compiled once
    per shape (which filters, how many statuses, the sort, a cursor or not; `_page_sql`), where SQLAlchemy would
    build it, derive its cache key and make a Row of each incident on every request (8-10 % of a list's CPU)."""
    if is_requester_only(principal) and not principal.has(Role.REQUESTER):
        raise Forbidden("no role that reads incidents")
    values: dict[str, Any] = {name: filters[name] for name in EQUALITY_FILTERS if filters.get(name) is not None}
    values |= {name: filters[name] for name in RANGE_AND_TEXT_FILTERS if filters.get(name)}
    statuses = tuple(dict.fromkeys(filters.get("status") or ()))  # each once: one shape per number of them
    values |= {f"status_{i}": status for i, status in enumerate(statuses)}
    values |= keyset_values(sort, limit, cursor)
    requester = is_requester_only(principal)
    if requester:
        values["me"] = principal.id
    filtered = tuple(name for name in (*EQUALITY_FILTERS, *RANGE_AND_TEXT_FILTERS) if name in values)
    sql, names = _page_sql(requester, filtered, len(statuses), sort.name, sort.descending, cursor is not None)
    return sql, [values[name] for name in names]


@functools.lru_cache(maxsize=512)
def _page_sql(
    requester: bool, filtered: tuple[str, ...], statuses: int, sort: str, descending: bool, after: bool
) -> tuple[str, tuple[str, ...]]:
    """A page's statement, compiled for asyncpg, and the names of its parameters in order."""
    stmt = select(*LISTED).where(*_visibility(requester, sa.bindparam("me")))
    for name in filtered:
        stmt = stmt.where(_FILTERS[name] if name in _FILTERS else getattr(Incident, name) == sa.bindparam(name))
    if statuses:
        stmt = stmt.where(col(Incident.status).in_([sa.bindparam(f"status_{i}") for i in range(statuses)]))
    ordered = keyset_statement(stmt, Sort(SORTS[sort], descending, sort), Incident.id, after=after)
    compiled = ordered.compile(dialect=asyncpg.dialect())  # type: ignore[no-untyped-call]
    assert all(bind.value is None for bind in compiled.binds.values()), "every value a named parameter"
    return str(compiled), tuple(compiled.positiontup or ())


_FILTERS: dict[str, ColumnElement[bool]] = {
    "created_after": col(Incident.created_at) >= sa.bindparam("created_after"),
    "created_before": col(Incident.created_at) < sa.bindparam("created_before"),
    "q": col(Incident.search).op("@@")(func.websearch_to_tsquery(sa.literal_column("'english'"), sa.bindparam("q"))),
}


async def notes(session: AsyncSession, incident: Incident, principal: Principal) -> Sequence[IncidentNote]:
    stmt = select(IncidentNote).where(IncidentNote.incident_id == incident.id)
    if is_requester_only(principal):
        stmt = stmt.where(IncidentNote.visibility == Visibility.PUBLIC)
    return (await session.exec(stmt.order_by(col(IncidentNote.created_at), col(IncidentNote.id)))).all()


async def history(session: AsyncSession, incident: Incident) -> list[HistoryRead]:
    return await INCIDENTS.history(session, incident)


def transitions(incident: Incident, principal: Principal) -> list[Transition]:
    return MACHINE.next_states(incident.status, {}) if principal.has(*WORKERS) else []
