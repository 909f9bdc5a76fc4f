"""Reading the log: filters, the list, one record, the NDJSON export (with the anchors), the anchor keys, and the
chunked walk along `seq` that the export, verification and replay share."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from itsm_shared.errors import Invalid, NotFound
from itsm_shared.pagination import Page, check_limit, decode_cursor, page_of, parse_sort
from sqlalchemy import ColumnElement, Row, Select, Text, and_, cast, text
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from audit.anchors import anchor_keys
from audit.chain import format_received_at
from audit.models import AuditAnchor, AuditEvent
from audit.schemas import TYPE_MATCH, AnchorKeyRead, EventFilter

SORTS = {"seq": col(AuditEvent.seq)}


def record_view(row: AuditEvent) -> dict[str, Any]:
    """CONTRACT §7: the whole CloudEvent, plus the log's own `received_at`, `seq`, `hash` (and `prev_hash`)."""
    return {
        **row.event,
        "received_at": format_received_at(row.received_at),
        "seq": row.seq,
        "hash": row.hash,
        "prev_hash": row.prev_hash,
    }


# ---------------------------------------------------------------- filters


def parse_type_pattern(pattern: str) -> tuple[str, str] | None:
    """("exact", type) or ("prefix", "itsm.incident.") or None for everything. `itsm.incident.created` and
    `incident.created` name the same type; `incident.*` (or `itsm.incident.*`) is a prefix. 422 otherwise
    (HTTP input is refused earlier, by `schemas.TypePattern`)."""
    value = pattern.strip()
    if not TYPE_MATCH.match(value):
        raise Invalid(
            "invalid type filter",
            errors=[{"loc": ["query", "type"], "msg": "an event type, or a prefix ending in .* (incident.*)"}],
        )
    if value in ("*", "itsm.*"):
        return None
    if not value.startswith("itsm."):
        value = f"itsm.{value}"
    if value.endswith(".*"):
        return "prefix", value[:-1]  # keeps the dot: incident.* never matches incidental.created
    return "exact", value


def type_condition(pattern: str, column: Any) -> ColumnElement[bool] | None:
    parsed = parse_type_pattern(pattern)
    if parsed is None:
        return None
    kind, value = parsed
    if kind == "prefix":
        # A range rather than LIKE: with the column's "C" collation it is an index range scan.
        condition: ColumnElement[bool] = and_(column >= value, column < value[:-1] + chr(ord(value[-1]) + 1))
    else:
        condition = column == value
    return condition


def _conditions(filters: EventFilter) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if filters.type is not None and (by_type := type_condition(filters.type, col(AuditEvent.type))) is not None:
        out.append(by_type)
    if filters.subject is not None:
        out.append(col(AuditEvent.subject) == filters.subject)
    if filters.actor is not None:
        out.append(col(AuditEvent.actor) == filters.actor)
    if filters.correlation_id is not None:
        out.append(col(AuditEvent.correlation_id) == filters.correlation_id)
    if filters.since is not None:
        out.append(col(AuditEvent.received_at) >= filters.since)
    if filters.until is not None:
        out.append(col(AuditEvent.received_at) < filters.until)
    return out


# ---------------------------------------------------------------- the list and one record


async def list_events(
    session: AsyncSession, *, filters: EventFilter, sort: str, limit: int, cursor: str | None
) -> Page[dict[str, Any]]:
    order = parse_sort(sort, SORTS)
    check_limit(limit)
    stmt = select(AuditEvent).where(*_conditions(filters))
    if filters.since is not None or filters.until is not None:
        # The same range as seq bounds (received_at never decreases along seq): a primary-key range to scan.
        bounds = await seq_range(session, filters.since, filters.until)
        if bounds is None:
            return Page(items=[], next_cursor=None)
        stmt = stmt.where(col(AuditEvent.seq) >= bounds[0], col(AuditEvent.seq) <= bounds[1])
    seq = col(AuditEvent.seq)
    if cursor:
        # seq is unique: "after the cursor" is a plain bound, an index range, where the shared keyset's
        # (value, id) disjunction would make PostgreSQL filter its way to the page.
        after, _ = decode_cursor(cursor, order)
        stmt = stmt.where(seq < after if order.descending else seq > after)
    stmt = stmt.order_by(seq.desc() if order.descending else seq.asc()).limit(limit + 1)
    rows = (await session.exec(stmt)).all()
    items, next_cursor = page_of(rows, order, limit, value_of=lambda r: r.seq, id_of=lambda r: r.event_id)
    return Page(items=[record_view(r) for r in items], next_cursor=next_cursor)


async def get_event(session: AsyncSession, event_id: uuid.UUID) -> dict[str, Any]:
    row = (await session.exec(select(AuditEvent).where(col(AuditEvent.event_id) == event_id))).first()
    if row is None:
        raise NotFound("no such event in the audit log")
    return record_view(row)


# ---------------------------------------------------------------- a stretch of the chain


async def seq_range(session: AsyncSession, since: datetime | None, until: datetime | None) -> tuple[int, int] | None:
    """The seq numbers of the first and last record received in [since, until). `received_at` never decreases
    along seq (`ingest.store_batch` makes it so), so a time range is one contiguous stretch of the chain."""
    # Each a lookup on the received_at index (a batch shares one received_at), then on its few rows.
    if since is None:
        first = (await session.execute(text("SELECT min(seq) FROM audit_event"))).scalar()
    else:
        first = (
            await session.execute(
                text(
                    "SELECT min(seq) FROM audit_event WHERE received_at = "
                    "(SELECT min(received_at) FROM audit_event WHERE received_at >= :since)"
                ),
                {"since": since},
            )
        ).scalar()
    if until is None:
        last = (await session.execute(text("SELECT max(seq) FROM audit_event"))).scalar()
    else:
        last = (
            await session.execute(
                text(
                    "SELECT max(seq) FROM audit_event WHERE received_at = "
                    "(SELECT max(received_at) FROM audit_event WHERE received_at < :until)"
                ),
                {"until": until},
            )
        ).scalar()
    if first is None or last is None or first > last:
        return None
    return int(first), int(last)


def _chunk_query(
    low: int, high: int, n: int, by_type: ColumnElement[bool] | None, anchors: bool
) -> Select[tuple[Any, ...]]:
    seq = col(AuditEvent.seq)
    columns: list[Any] = [
        seq,
        col(AuditEvent.event_id),
        col(AuditEvent.type),
        col(AuditEvent.correlation_id),
        col(AuditEvent.received_at),
        cast(col(AuditEvent.event), Text).label("event"),
        col(AuditEvent.prev_hash),
        col(AuditEvent.hash),
    ]
    if anchors:  # the anchor that ends at this record, if one does: (from_seq, kid, signature) or NULLs
        columns += [col(AuditAnchor.from_seq), col(AuditAnchor.kid), col(AuditAnchor.signature)]
    stmt = sa_select(*columns).where(seq >= low, seq <= high).order_by(seq).limit(n)
    if anchors:
        stmt = stmt.select_from(AuditEvent).outerjoin(AuditAnchor, col(AuditAnchor.seq) == seq)
    return stmt if by_type is None else stmt.where(by_type)


async def walk(
    sessions: async_sessionmaker[AsyncSession],
    low: int,
    high: int,
    chunk: int,
    by_type: ColumnElement[bool] | None = None,
    *,
    anchors: bool = False,
) -> AsyncIterator[Sequence[Row[Any]]]:
    """Rows low..high in seq order, `chunk` at a time, each chunk its own short query and connection: a slow
    reader holds neither a transaction nor a pool connection between chunks. With `anchors`, each row also has
    the anchor ending at it (`from_seq`, `kid`, `signature`; NULLs where none does)."""
    while low <= high:
        async with sessions() as session:
            rows = (await session.execute(_chunk_query(low, high, chunk, by_type, anchors))).all()
        if not rows:
            return
        yield rows
        low = rows[-1].seq + 1


# ---------------------------------------------------------------- the export


def export_line(row: Row[Any]) -> bytes:
    """One NDJSON line: exactly what the hash covers, with the hashes, and the anchor that ends at this record
    when one does; `event` as stored, verbatim."""
    head: dict[str, Any] = {
        "seq": row.seq,
        "event_id": str(row.event_id),
        "received_at": format_received_at(row.received_at),
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }
    if row.signature is not None:
        head["anchor"] = {"from_seq": row.from_seq, "kid": row.kid, "signature": row.signature}
    text = json.dumps(head, separators=(",", ":"))
    return f'{text[:-1]},"event":{row.event}}}\n'.encode()


async def export(
    sessions: async_sessionmaker[AsyncSession], *, since: datetime | None, until: datetime | None, chunk: int
) -> AsyncIterator[bytes]:
    async with sessions() as session:
        bounds = await seq_range(session, since, until)
    if bounds is None:
        return
    async for rows in walk(sessions, bounds[0], bounds[1], chunk, anchors=True):
        yield b"".join(export_line(row) for row in rows)


# ---------------------------------------------------------------- the anchor keys


def anchor_key_list() -> list[AnchorKeyRead]:
    """The public keys whose anchors verify: the one signing now first, then former ones still accepted."""
    keys = anchor_keys().public_keys()
    return [AnchorKeyRead(kid=kid, public_key=public, current=current) for kid, public, current in keys]
