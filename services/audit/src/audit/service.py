"""Use cases of the audit log: store a batch of events on the chain, read and export them, verify the chain,
replay a range of it to a queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.exceptions import ChannelNotFoundEntity
from faststream.rabbit import RabbitBroker
from itsm_shared.errors import Invalid
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, CloudEvent
from itsm_shared.pagination import Sort, check_limit, decode_cursor, page_of
from pydantic import ValidationError
from sqlalchemy import ColumnElement, Row, Select, Text, and_, cast, text
from sqlalchemy import select as sa_select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from audit.chain import GENESIS, canonical_json, format_received_at, record_hash
from audit.models import AuditEvent

log = logging.getLogger(__name__)

# Every writer of the chain, in any process, takes this transaction-scoped lock before reading the tail.
CHAIN_LOCK = "SELECT pg_advisory_xact_lock(hashtext('itsm.audit.chain'))"


# ---------------------------------------------------------------- what arrives


class InvalidEvent(Exception):
    """The message is not a CloudEvent this log can hold; it is parked with this reason."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message that parsed as a CloudEvent: `document` is its JSON text as received, `value` the parsed
    event. `exact` when the event holds no number with a fraction or an exponent: then what jsonb stores
    reads back as the same values, and the canonical form can be taken from `value` directly."""

    event_id: uuid.UUID
    type: str
    source: str
    subject: str | None
    actor: str | None
    correlation_id: str | None
    time: datetime
    document: str
    value: dict[str, Any]
    exact: bool


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Floats:
    """json.loads' parse_float hook that remembers it was called."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, text: str) -> float:
        self.seen = True
        return float(text)


def parse_incoming(body: bytes) -> Incoming:
    floats = _Floats()
    try:
        document = body.decode("utf-8")
        raw = json.loads(document, parse_constant=_no_constants, parse_float=floats)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidEvent(f"not JSON: {str(exc)[:200]}") from exc
    if not isinstance(raw, dict):
        raise InvalidEvent("not a valid event: not a JSON object")
    try:
        event = CloudEvent[Any].model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidEvent(f"not a valid event: {details}") from exc
    if event.time.tzinfo is None:
        raise InvalidEvent("not a valid event: time: needs a UTC offset (RFC 3339)")
    return Incoming(
        event_id=event.id,
        type=event.type,
        source=event.source,
        subject=event.subject,
        actor=event.actorid,
        correlation_id=event.correlationid,
        time=event.time,
        document=document,
        value=raw,
        exact=not floats.seen,
    )


# ---------------------------------------------------------------- storing a batch


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Already on the chain (a redelivery, or a replay reaching us again), or earlier in the same batch."""


@dataclass(frozen=True, slots=True)
class Unstorable:
    reason: str


Outcome = Stored | Duplicate | Unstorable
Form = tuple[str, str]  # (the document to store, the canonical JSON its stored value reads back as)

_NORMALIZE = text(
    "SELECT CAST(d.doc AS jsonb)::text FROM unnest(CAST(:docs AS text[])) WITH ORDINALITY AS d(doc, n) ORDER BY d.n"
)
_NORMALIZE_ONE = text("SELECT CAST(CAST(:doc AS text) AS jsonb)::text")
_TAIL = text(
    """
    SELECT t.seq, t.hash, t.received_at, clock_timestamp() AS now,
           ARRAY(SELECT event_id FROM audit_event WHERE event_id = ANY(CAST(:ids AS uuid[]))) AS existing
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (SELECT seq, hash, received_at FROM audit_event ORDER BY seq DESC LIMIT 1) AS t ON true
    """
)
_INSERT = text(
    """
    INSERT INTO audit_event
        (seq, event_id, type, source, subject, actor, correlation_id, time, received_at, event, prev_hash, hash)
    SELECT r.seq, r.event_id, r.type, r.source, r.subject, r.actor, r.correlation_id, r.time, :received_at,
           CAST(r.event AS jsonb), r.prev_hash, r.hash
    FROM unnest(CAST(:seq AS bigint[]), CAST(:event_id AS uuid[]), CAST(:type AS text[]), CAST(:source AS text[]),
                CAST(:subject AS text[]), CAST(:actor AS text[]), CAST(:correlation_id AS text[]),
                CAST(:time AS timestamptz[]), CAST(:event AS text[]), CAST(:prev_hash AS text[]),
                CAST(:hash AS text[]))
         AS r(seq, event_id, type, source, subject, actor, correlation_id, time, event, prev_hash, hash)
    """
)


def _is_data_exception(exc: DBAPIError) -> bool:
    """SQLSTATE class 22: the value itself is wrong (jsonb refuses \u0000, a lone surrogate, a number too big)."""
    return str(getattr(exc.orig, "sqlstate", "") or "").startswith("22")


def _canonical(stored_text: str) -> Form | Unstorable:
    try:
        return stored_text, canonical_json(json.loads(stored_text))
    except (ValueError, RecursionError) as exc:
        return Unstorable(f"not storable as JSON: {str(exc)[:300]}")


async def _one_by_one(session: AsyncSession, documents: list[str]) -> list[Form | Unstorable]:
    """Each document through jsonb on its own, to tell the ones it refuses from the rest. Only after a batch
    failed on one, so rare; each in a transaction of its own."""
    out: list[Form | Unstorable] = []
    for document in documents:
        try:
            stored = (await session.execute(_NORMALIZE_ONE, {"doc": document})).scalar_one()
        except DBAPIError as exc:
            await session.rollback()
            if not _is_data_exception(exc):
                raise
            out.append(Unstorable(f"not storable as JSON: {str(exc.orig)[:300]}"))
            continue
        await session.rollback()
        out.append(_canonical(stored))
    return out


async def _forms(session: AsyncSession, batch: Sequence[Incoming]) -> list[Form | Unstorable]:
    """What to store and hash for each event. The chain hashes what verification will read back, so an event
    with fractions or exponents goes through jsonb first (jsonb writes 1e2 as 100, 1.0e16 as an integer)."""
    forms: list[Form | Unstorable | None] = [
        (item.document, canonical_json(item.value)) if item.exact else None for item in batch
    ]
    inexact = [i for i, form in enumerate(forms) if form is None]
    if inexact:
        documents = [batch[i].document for i in inexact]
        try:
            texts: list[Form | Unstorable] = [
                _canonical(t) for t in (await session.execute(_NORMALIZE, {"docs": documents})).scalars()
            ]
        except DBAPIError as exc:
            await session.rollback()
            if not _is_data_exception(exc):
                raise
            texts = await _one_by_one(session, documents)
        for i, form in zip(inexact, texts, strict=True):
            forms[i] = form
    return [form for form in forms if form is not None]


async def store_batch(session: AsyncSession, batch: Sequence[Incoming]) -> list[Outcome]:
    """Append the batch to the chain in one transaction, in order, each event id once. The caller acknowledges
    the messages only after this returns: the rows are committed by then."""
    forms = await _forms(session, batch)
    try:
        return await _append(session, batch, forms)
    except DBAPIError as exc:
        await session.rollback()
        if not _is_data_exception(exc):
            raise
    # jsonb refused a document that parsed as JSON (\u0000, a lone surrogate): find it, store the others.
    plain = [i for i, form in enumerate(forms) if not isinstance(form, Unstorable)]
    for i, checked in zip(plain, await _one_by_one(session, [batch[i].document for i in plain]), strict=True):
        if isinstance(checked, Unstorable):
            forms[i] = checked
    return await _append(session, batch, forms)


async def _append(session: AsyncSession, batch: Sequence[Incoming], forms: list[Form | Unstorable]) -> list[Outcome]:
    outcomes: list[Outcome] = [form if isinstance(form, Unstorable) else Duplicate() for form in forms]
    candidates = [i for i, form in enumerate(forms) if not isinstance(form, Unstorable)]
    await session.execute(text(CHAIN_LOCK))
    tail = (await session.execute(_TAIL, {"ids": [batch[i].event_id for i in candidates]})).one()
    seq: int = tail.seq or 0
    prev: str = tail.hash or GENESIS
    received_at: datetime = tail.now if tail.received_at is None else max(tail.now, tail.received_at)
    received = format_received_at(received_at)
    seen: set[uuid.UUID] = set(tail.existing or ())
    columns = ("seq", "event_id", "type", "source", "subject", "actor", "correlation_id", "time", "event")
    rows: dict[str, list[Any]] = {k: [] for k in (*columns, "prev_hash", "hash")}
    for i in candidates:
        item, form = batch[i], forms[i]
        assert not isinstance(form, Unstorable)
        document, canonical = form
        if item.event_id in seen:
            continue  # stays a Duplicate
        seen.add(item.event_id)
        seq += 1
        digest = record_hash(prev, seq, str(item.event_id), received, canonical)
        values = (seq, item.event_id, item.type, item.source, item.subject, item.actor, item.correlation_id)
        for key, value in zip(columns, (*values, item.time, document), strict=True):
            rows[key].append(value)
        rows["prev_hash"].append(prev)
        rows["hash"].append(digest)
        outcomes[i] = Stored(seq)
        prev = digest
    if rows["seq"]:
        await session.execute(_INSERT, {**rows, "received_at": received_at})
    await session.commit()
    return outcomes


# ---------------------------------------------------------------- reading


def record_view(row: AuditEvent) -> dict[str, Any]:
    """CONTRACT §7: the whole CloudEvent, plus the log's own `received_at`, `seq`, `hash` (and `prev_hash`)."""
    return {
        **row.event,
        "received_at": format_received_at(row.received_at),
        "seq": row.seq,
        "hash": row.hash,
        "prev_hash": row.prev_hash,
    }


_TYPE_PATTERN = re.compile(r"^(?:\*|[a-z_]+(?:\.[a-z_]+)*(?:\.\*)?)$")


def parse_type_pattern(pattern: str) -> tuple[str, str] | None:
    """("exact", type) or ("prefix", "itsm.incident.") or None for everything. `itsm.incident.created` and
    `incident.created` name the same type; `incident.*` (or `itsm.incident.*`) is a prefix. 422 otherwise."""
    value = pattern.strip()
    if not _TYPE_PATTERN.match(value):
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


@dataclass(frozen=True)
class EventFilter:
    type: str | None = None
    subject: str | None = None
    actor: str | None = None
    correlation_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.type is not None and (by_type := type_condition(self.type, col(AuditEvent.type))) is not None:
            out.append(by_type)
        if self.subject is not None:
            out.append(col(AuditEvent.subject) == self.subject)
        if self.actor is not None:
            out.append(col(AuditEvent.actor) == self.actor)
        if self.correlation_id is not None:
            out.append(col(AuditEvent.correlation_id) == self.correlation_id)
        if self.since is not None:
            out.append(col(AuditEvent.received_at) >= self.since)
        if self.until is not None:
            out.append(col(AuditEvent.received_at) < self.until)
        return out


SORTS = {"seq": col(AuditEvent.seq)}


async def list_events(
    session: AsyncSession, *, filters: EventFilter, sort: Sort, limit: int, cursor: str | None
) -> tuple[list[AuditEvent], str | None]:
    check_limit(limit)
    stmt = select(AuditEvent).where(*filters.conditions())
    if filters.since is not None or filters.until is not None:
        # The same range as seq bounds (received_at never decreases along seq): a primary-key range to scan.
        bounds = await seq_range(session, filters.since, filters.until)
        if bounds is None:
            return [], None
        stmt = stmt.where(col(AuditEvent.seq) >= bounds[0], col(AuditEvent.seq) <= bounds[1])
    seq = col(AuditEvent.seq)
    if cursor:
        # seq is unique: "after the cursor" is a plain bound, an index range, where the shared keyset's
        # (value, id) disjunction would make PostgreSQL filter its way to the page.
        after, _ = decode_cursor(cursor, sort)
        stmt = stmt.where(seq < after if sort.descending else seq > after)
    stmt = stmt.order_by(seq.desc() if sort.descending else seq.asc()).limit(limit + 1)
    rows = (await session.exec(stmt)).all()
    return page_of(rows, sort, limit, value_of=lambda r: r.seq, id_of=lambda r: r.event_id)


async def get_event(session: AsyncSession, event_id: uuid.UUID) -> AuditEvent | None:
    return (await session.exec(select(AuditEvent).where(col(AuditEvent.event_id) == event_id))).first()


async def seq_range(session: AsyncSession, since: datetime | None, until: datetime | None) -> tuple[int, int] | None:
    """The seq numbers of the first and last record received in [since, until). `received_at` never decreases
    along seq (store_batch makes it so), so a time range is one contiguous stretch of the chain."""
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


ChunkQuery = Select[int, uuid.UUID, str, str | None, datetime, str, str, str]


def _chunk_query(low: int, high: int, n: int, by_type: ColumnElement[bool] | None) -> ChunkQuery:
    seq = col(AuditEvent.seq)
    stmt = (
        sa_select(
            seq,
            col(AuditEvent.event_id),
            col(AuditEvent.type),
            col(AuditEvent.correlation_id),
            col(AuditEvent.received_at),
            cast(col(AuditEvent.event), Text).label("event"),
            col(AuditEvent.prev_hash),
            col(AuditEvent.hash),
        )
        .where(seq >= low, seq <= high)
        .order_by(seq)
        .limit(n)
    )
    return stmt if by_type is None else stmt.where(by_type)


async def _walk(
    sessions: async_sessionmaker[AsyncSession],
    low: int,
    high: int,
    chunk: int,
    by_type: ColumnElement[bool] | None = None,
) -> AsyncIterator[Sequence[Row[Any]]]:
    """Rows low..high in seq order, `chunk` at a time, each chunk its own short query and connection: a slow
    reader holds neither a transaction nor a pool connection between chunks."""
    while low <= high:
        async with sessions() as session:
            rows = (await session.execute(_chunk_query(low, high, chunk, by_type))).all()
        if not rows:
            return
        yield rows
        low = rows[-1].seq + 1


def export_line(row: Row[Any]) -> bytes:
    """One NDJSON line: exactly what the hash covers, with the hashes; `event` as stored, verbatim."""
    head = json.dumps(
        {
            "seq": row.seq,
            "event_id": str(row.event_id),
            "received_at": format_received_at(row.received_at),
            "prev_hash": row.prev_hash,
            "hash": row.hash,
        },
        separators=(",", ":"),
    )
    return f'{head[:-1]},"event":{row.event}}}\n'.encode()


async def export(
    sessions: async_sessionmaker[AsyncSession], *, since: datetime | None, until: datetime | None, chunk: int
) -> AsyncIterator[bytes]:
    async with sessions() as session:
        bounds = await seq_range(session, since, until)
    if bounds is None:
        return
    async for rows in _walk(sessions, bounds[0], bounds[1], chunk):
        yield b"".join(export_line(row) for row in rows)


# ---------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    first_bad_seq: int | None
    from_seq: int
    last_seq: int
    full: bool
    reason: str | None = None


def check_chunk(rows: Sequence[Sequence[Any]], prev: str, expected: int) -> tuple[int | None, str | None, str, int]:
    """(first bad seq, why, hash of the last row checked, rows checked). Pure CPU: run off the event loop."""
    checked = 0
    last_moment: datetime | None = None
    received = ""
    for seq, event_id, _type, _correlation, received_at, event, prev_hash, digest in rows:
        if seq != expected:
            return expected, "record missing", prev, checked
        checked += 1
        if prev_hash != prev:
            return seq, "does not link to the record before", prev, checked
        if received_at != last_moment:  # a batch shares one received_at: format it once
            last_moment, received = received_at, format_received_at(received_at)
        try:
            form = canonical_json(json.loads(event))
        except (ValueError, RecursionError):
            return seq, "event unreadable", prev, checked
        if record_hash(prev, seq, str(event_id), received, form) != digest:
            return seq, "hash does not match the record", prev, checked
        prev = digest
        expected += 1
    return None, None, prev, checked


async def verify(sessions: async_sessionmaker[AsyncSession], *, full: bool, chunk: int) -> Verification:
    """Walk the chain from the last checkpoint (or from seq 1 when `full`) to the newest record; when it holds,
    append a checkpoint there so the next verification starts from it."""
    async with sessions() as session:
        last_seq = (await session.execute(text("SELECT max(seq) FROM audit_event"))).scalar() or 0
        checkpoint = None
        if not full:
            checkpoint = (
                await session.execute(text("SELECT seq, hash FROM audit_checkpoint ORDER BY seq DESC LIMIT 1"))
            ).first()
        start, prev = 1, GENESIS
        if checkpoint is not None:
            anchored = (
                await session.execute(text("SELECT hash FROM audit_event WHERE seq = :s"), {"s": checkpoint.seq})
            ).scalar()
            if anchored != checkpoint.hash:
                lost = "record at the last checkpoint changed" if anchored else "record at the last checkpoint missing"
                return Verification(False, 0, checkpoint.seq, checkpoint.seq, last_seq, full, lost)
            start, prev = checkpoint.seq + 1, checkpoint.hash
    checked = 0
    expected = start
    rows_iter = _walk(sessions, start, last_seq, chunk).__aiter__()
    pending = asyncio.ensure_future(anext(rows_iter, None))
    try:
        while (rows := await pending) is not None:
            pending = asyncio.ensure_future(anext(rows_iter, None))  # fetch the next chunk while this one hashes
            bad, why, prev, n = await asyncio.to_thread(check_chunk, rows, prev, expected)
            checked += n
            if bad is not None:
                return Verification(False, checked, bad, start, last_seq, full, why)
            expected += n
    finally:
        pending.cancel()  # stopped early: the next chunk's query is not needed
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending
        await rows_iter.aclose()  # type: ignore[attr-defined]
    if expected <= last_seq:  # rows vanished from the end while we walked
        return Verification(False, checked, expected, start, last_seq, full, "record missing")
    if last_seq >= start:
        async with sessions() as session:
            await session.execute(
                text("INSERT INTO audit_checkpoint (seq, hash) VALUES (:s, :h) ON CONFLICT (seq) DO NOTHING"),
                {"s": last_seq, "h": prev},
            )
            await session.commit()
    return Verification(True, checked, None, start, last_seq, full)


# ---------------------------------------------------------------- replaying


class QueueMissing(Invalid):
    def __init__(self, queue: str) -> None:
        super().__init__(
            f"queue {queue!r} does not exist; declare and bind it first",
            errors=[{"loc": ["body", "queue"], "msg": "no such queue"}],
        )


async def ensure_queue_exists(amqp_url: str, queue: str) -> None:
    """A passive declare, on a connection of its own: a refused passive declare closes its channel, and the
    broker's channels carry the service's consumer."""
    connection = await aio_pika.connect(amqp_url, timeout=10)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity as exc:
            raise QueueMissing(queue) from exc
    finally:
        await connection.close()


async def replay(
    sessions: async_sessionmaker[AsyncSession],
    broker: RabbitBroker,
    *,
    queue: str,
    since: datetime | None,
    until: datetime | None,
    type_pattern: str | None,
    chunk: int,
) -> tuple[int, int | None, int | None]:
    """Republish the stored events of [since, until) (of a type or type prefix) to `queue`, in seq order, each
    with its own id as message id: a consumer that is idempotent on the id ignores what it has already seen.
    Returns (published, first seq, last seq)."""
    by_type = type_condition(type_pattern, col(AuditEvent.type)) if type_pattern else None
    async with sessions() as session:
        bounds = await seq_range(session, since, until)
    if bounds is None:
        return 0, None, None
    published = 0
    first: int | None = None
    last: int | None = None
    async for rows in _walk(sessions, bounds[0], bounds[1], chunk, by_type):
        # One channel publishes in the order calls reach it; the confirms of a chunk are awaited together.
        await asyncio.gather(*(_republish(broker, queue, row) for row in rows))
        published += len(rows)
        first = rows[0].seq if first is None else first
        last = rows[-1].seq
    log.info("replayed", extra={"queue": queue, "published": published, "first_seq": first, "last_seq": last})
    return published, first, last


async def _republish(broker: RabbitBroker, queue: str, row: Row[Any]) -> None:
    await broker.publish(
        row.event.encode(),
        exchange="",
        routing_key=queue,
        persist=True,
        mandatory=True,
        message_id=str(row.event_id),
        correlation_id=row.correlation_id,
        content_type=CLOUDEVENTS_CONTENT_TYPE,
        message_type=row.type,
        timeout=10,
    )
