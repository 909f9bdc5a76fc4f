"""Storing events on the chain: what counts as an event, and appending a batch of them, in order, each event id
once, with the batch's anchor (`audit.anchors`), in the caller's transaction (the batch consumer's,
`itsm_shared.batches`; `audit.consumers`)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from itsm_shared.app import Runtime
from itsm_shared.batches import Duplicate as Duplicate
from itsm_shared.batches import Rejected
from itsm_shared.db import transaction
from itsm_shared.events import CloudEvent
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel.ext.asyncio.session import AsyncSession

from audit.anchors import AnchorKeys, anchor_keys, reset_anchor_keys
from audit.chain import GENESIS, canonical_json, format_received_at, record_hash
from audit.config import get_settings
from audit.errors import AnchorKeyError, InvalidEvent

log = logging.getLogger(__name__)

# Every writer of the chain, in any process, takes this transaction-scoped lock before reading the tail.
CHAIN_LOCK = "SELECT pg_advisory_xact_lock(hashtext('itsm.audit.chain'))"


# ---------------------------------------------------------------- what arrives


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message that parsed as a CloudEvent: `document` is its JSON text as received, `value` the parsed
    event. `exact` when the event holds no number that jsonb rewrites (one with an exponent, a negative zero):
    then what jsonb stores reads back as the same values, and the canonical form can be taken from `value`
    directly. `refusable` when it holds something jsonb may refuse though Python's json took it (`_REFUSABLE`, a
    decimal longer than `_LONGEST_DECIMAL`): only a batch with one of these is appended in a savepoint."""

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
    refusable: bool


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Floats:
    """json.loads' parse_float hook that remembers a number jsonb would not give back as it came. jsonb keeps a
    decimal as written (`14400.0`, `0.10`: read back, the same float), but writes an exponent out in digits (`1e2`
    as `100`, which reads back as an integer) and drops the sign of a zero (`-0.0` as `0.0`)."""

    __slots__ = ("long", "seen")

    def __init__(self) -> None:
        self.seen = False
        self.long = False

    def __call__(self, text: str) -> float:
        value = float(text)
        if "e" in text or "E" in text or (value == 0 and text.startswith("-")):
            self.seen = True
        if len(text) > _LONGEST_DECIMAL:
            self.long = True
        return value


# What jsonb refuses in a document that Python's json parses: a \u0000 escape, or a UTF-16 surrogate escape that is
# not half of a pair (a pair matches too: a false alarm costs a savepoint, nothing else); and a decimal longer than
# numeric holds (16383 digits after the point, 131072 before). Python's json refuses the rest first (an integer of
# more than 4300 digits, nesting deeper than jsonb's stack allows, a raw control character).
_REFUSABLE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_LONGEST_DECIMAL = 1000


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
        refusable=floats.long or _REFUSABLE.search(document) is not None,
    )


# ---------------------------------------------------------------- storing a batch


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int


@dataclass(frozen=True, slots=True)
class Unstorable(Rejected):
    """PostgreSQL refuses the document (jsonb: \\u0000, a lone surrogate): parked with the reason, the rest stored."""


# Duplicate: already on the chain (a redelivery, or a replay reaching us again), or earlier in the same batch.
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
# The batch's records and its anchor, in one statement.
_INSERT = text(
    """
    WITH records AS (
        INSERT INTO audit_event
            (seq, event_id, type, source, subject, actor, correlation_id, time, received_at, event, prev_hash, hash)
        SELECT r.seq, r.event_id, r.type, r.source, r.subject, r.actor, r.correlation_id, r.time, :received_at,
               CAST(r.event AS jsonb), r.prev_hash, r.hash
        FROM unnest(CAST(:seq AS bigint[]), CAST(:event_id AS uuid[]), CAST(:type AS text[]),
                    CAST(:source AS text[]), CAST(:subject AS text[]), CAST(:actor AS text[]),
                    CAST(:correlation_id AS text[]), CAST(:time AS timestamptz[]), CAST(:event AS text[]),
                    CAST(:prev_hash AS text[]), CAST(:hash AS text[]))
             AS r(seq, event_id, type, source, subject, actor, correlation_id, time, event, prev_hash, hash)
        RETURNING 1
    )
    INSERT INTO audit_anchor (seq, from_seq, kid, signature)
    VALUES (:anchor_seq, :anchor_from_seq, :anchor_kid, :anchor_signature)
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
    failed on one, so rare; each in a savepoint of its own."""
    out: list[Form | Unstorable] = []
    for document in documents:
        try:
            async with session.begin_nested():
                stored = (await session.execute(_NORMALIZE_ONE, {"doc": document})).scalar_one()
        except DBAPIError as exc:
            if not _is_data_exception(exc):
                raise
            out.append(Unstorable(f"not storable as JSON: {str(exc.orig)[:300]}"))
            continue
        out.append(_canonical(stored))
    return out


def _exact_form(item: Incoming) -> Form | Unstorable:
    canonical = canonical_json(item.value)
    if item.refusable:
        try:
            canonical.encode()  # what the hash is taken of (chain.record_hash)
        except UnicodeEncodeError:
            return Unstorable("not storable as JSON: half of a UTF-16 surrogate pair")
    return item.document, canonical


async def _forms(session: AsyncSession, batch: Sequence[Incoming]) -> list[Form | Unstorable]:
    """What to store and hash for each event. The chain hashes what verification will read back, so an event
    with a number jsonb rewrites goes through jsonb first (jsonb writes 1e2 as 100, 1.0e16 as an integer)."""
    forms: list[Form | Unstorable | None] = [_exact_form(item) if item.exact else None for item in batch]
    inexact = [i for i, form in enumerate(forms) if form is None]
    if inexact:
        documents = [batch[i].document for i in inexact]
        try:
            async with session.begin_nested():
                stored = (await session.execute(_NORMALIZE, {"docs": documents})).scalars().all()
            texts: list[Form | Unstorable] = [_canonical(t) for t in stored]
        except DBAPIError as exc:
            if not _is_data_exception(exc):
                raise
            texts = await _one_by_one(session, documents)
        for i, form in zip(inexact, texts, strict=True):
            forms[i] = form
    return [form for form in forms if form is not None]


async def store_batch(
    session: AsyncSession, batch: Sequence[Incoming], keys: AnchorKeys | None = None
) -> list[Outcome]:
    """Append the batch to the chain, in order, each event id once, and sign what it appended (one anchor), in
    the caller's transaction: the caller (the batch consumer) commits it and acknowledges the messages only
    after that commit. A refused document costs a savepoint, never the caller's transaction. `keys`: the
    process's anchor keys unless given."""
    keys = anchor_keys() if keys is None else keys
    forms = await _forms(session, batch)
    if not any(item.refusable for item in batch):
        return await _append(session, batch, forms, keys)
    try:
        # The savepoint is two round trips a batch, only for a batch with a document jsonb may refuse: without
        # it that refusal would abort the transaction.
        async with session.begin_nested():
            return await _append(session, batch, forms, keys)
    except DBAPIError as exc:
        if not _is_data_exception(exc):
            raise
    # jsonb refused a document that parsed as JSON (\u0000, a lone surrogate): find it, store the others.
    plain = [i for i, form in enumerate(forms) if not isinstance(form, Unstorable)]
    for i, checked in zip(plain, await _one_by_one(session, [batch[i].document for i in plain]), strict=True):
        if isinstance(checked, Unstorable):
            forms[i] = checked
    return await _append(session, batch, forms, keys)


async def _append(
    session: AsyncSession, batch: Sequence[Incoming], forms: list[Form | Unstorable], keys: AnchorKeys
) -> list[Outcome]:
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
        # The anchor signs this batch's stretch with the hash the chain has at its end (audit.anchors).
        anchor = keys.sign(rows["seq"][0], rows["seq"][-1], rows["hash"][-1])
        params = {
            "anchor_seq": anchor.seq,
            "anchor_from_seq": anchor.from_seq,
            "anchor_kid": anchor.kid,
            "anchor_signature": anchor.signature,
        }
        await session.execute(_INSERT, {**rows, "received_at": received_at, **params})
    return outcomes


# ---------------------------------------------------------------- at start


async def adopt_unanchored(session: AsyncSession, keys: AnchorKeys, through: int) -> bool:
    """Sign records 1..`through` as one stretch, when no anchor covers any of them: the records of a log from
    before anchoring (README, Audit, "Upgrading"). Asked for by whoever holds the key, once; nothing else ever
    signs records the writer did not append itself. False when there was nothing to adopt."""
    await session.execute(text(CHAIN_LOCK))
    anchored = (
        await session.execute(text("SELECT min(seq) FROM audit_anchor WHERE from_seq <= :n"), {"n": through})
    ).scalar()
    if anchored is not None:
        log.info("ITSM_AUDIT_ANCHOR_ADOPT_THROUGH: records up to %s are anchored already; remove the setting", through)
        return False
    digest = (await session.execute(text("SELECT hash FROM audit_event WHERE seq = :n"), {"n": through})).scalar()
    if digest is None:
        raise AnchorKeyError(f"ITSM_AUDIT_ANCHOR_ADOPT_THROUGH={through}: there is no record {through}")
    anchor = keys.sign(1, through, digest)
    await session.execute(
        text("INSERT INTO audit_anchor (seq, from_seq, kid, signature) VALUES (:seq, 1, :kid, :signature)"),
        {"seq": through, "kid": anchor.kid, "signature": anchor.signature},
    )
    log.warning("signed records 1..%s, stored before anchoring, as one anchor; remove the setting now", through)
    return True


async def prepare(rt: Runtime) -> None:
    """At start: refuse to run without a usable anchor key (`AnchorKeyError` says what to set), and adopt the
    records of a log from before anchoring when asked to (ITSM_AUDIT_ANCHOR_ADOPT_THROUGH)."""
    reset_anchor_keys()
    keys = anchor_keys()
    through = get_settings().audit_anchor_adopt_through
    if through is not None:
        async with transaction(rt.sessions) as session:
            await adopt_unanchored(session, keys, through)
