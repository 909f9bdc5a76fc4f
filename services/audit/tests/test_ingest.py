"""The log's rules for what comes in: what counts as an event, one record per event id, and a gap-free chain
whose hashes a third party can recompute from the README's recipe."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from audit import ingest
from audit.chain import GENESIS, canonical_json, format_received_at, record_hash
from audit.errors import InvalidEvent
from audit.ingest import Duplicate, Stored, Unstorable
from audit.verify import verify_chain
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .conftest import assert_chain_is_gap_free, event, incoming, store


def third_party_hash(prev_hash: str, record: dict[str, Any]) -> str:
    """The README's recipe, written from the text rather than from audit.chain."""
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


# ---------------------------------------------------------------- the hash, as documented


def test_record_hash_is_sha256_of_the_previous_hash_and_the_canonical_record() -> None:
    e = {"specversion": "1.0", "id": str(uuid.uuid4()), "type": "itsm.x.y", "data": {"é": "ü", "b": [1, 2.5, None]}}
    received = "2026-01-02T03:04:05.000006Z"
    record = {"seq": 7, "event_id": e["id"], "received_at": received, "event": e}
    assert record_hash("ab" * 32, 7, e["id"], received, canonical_json(e)) == third_party_hash("ab" * 32, record)
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'


def test_received_at_has_one_text_form() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert format_received_at(moment) == "2026-01-02T03:04:05.000000Z"


# ---------------------------------------------------------------- what is an event


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b'{"specversion": NaN}', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"hello": "world"}', "specversion"),
        (json.dumps({**event(), "type": "Incident.Created"}).encode(), "type"),
        (json.dumps({**event(), "id": "not-a-uuid"}).encode(), "id"),
        (json.dumps({**event(), "time": "2026-01-01T00:00:00"}).encode(), "UTC offset"),
    ],
)
def test_what_is_not_a_cloudevent_is_refused_with_a_reason(body: bytes, why: str) -> None:
    with pytest.raises(InvalidEvent, match=why):
        ingest.parse_incoming(body)


def test_an_event_keeps_every_attribute_it_came_with() -> None:
    e = {**event(), "customext": "kept"}
    parsed = incoming(e)
    assert json.loads(parsed.document) == e
    assert parsed.event_id == uuid.UUID(e["id"]) and parsed.type == "itsm.incident.created"


# ---------------------------------------------------------------- storing


async def test_a_batch_is_stored_in_order_on_a_gap_free_chain(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    events = [event(n=n) for n in range(5)]
    outcomes = await store(sessions, *events)
    assert all(isinstance(o, Stored) for o in outcomes)
    seqs = [o.seq for o in outcomes]
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    rows = await superuser.fetch(
        "SELECT seq, event_id::text AS id, received_at, event::text AS ev, prev_hash, hash FROM audit_event "
        "WHERE seq >= $1 - 1 ORDER BY seq",
        seqs[0],
    )
    by_seq = {r["seq"]: r for r in rows}
    for e, seq in zip(events, seqs, strict=True):
        row = by_seq[seq]
        assert row["id"] == e["id"]
        prev = by_seq[seq - 1]["hash"] if seq > 1 else GENESIS
        assert row["prev_hash"] == prev
        record = {
            "seq": seq,
            "event_id": e["id"],
            "received_at": format_received_at(row["received_at"]),
            "event": json.loads(row["ev"]),
        }
        assert row["hash"] == third_party_hash(prev, record)
        assert json.loads(row["ev"]) == e  # the whole CloudEvent
    await assert_chain_is_gap_free(superuser)


async def test_each_event_id_is_stored_once(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    first, second = event(), event()
    outcomes = await store(sessions, first, first, second)  # a duplicate inside the batch
    assert isinstance(outcomes[0], Stored) and isinstance(outcomes[1], Duplicate) and isinstance(outcomes[2], Stored)
    again = await store(sessions, second, first)  # redeliveries of what is stored already
    assert again == [Duplicate(), Duplicate()]
    counts = await superuser.fetch(
        "SELECT count(*) FROM audit_event WHERE event_id = ANY($1::uuid[]) GROUP BY event_id",
        [first["id"], second["id"]],
    )
    assert [r[0] for r in counts] == [1, 1]
    await assert_chain_is_gap_free(superuser)


async def test_received_at_never_decreases_along_the_chain(superuser: asyncpg.Connection) -> None:
    backwards = await superuser.fetchval(
        "SELECT count(*) FROM (SELECT received_at < lag(received_at) OVER (ORDER BY seq) AS back FROM audit_event) t "
        "WHERE back"
    )
    assert backwards == 0


async def test_an_event_postgresql_cannot_store_is_refused_and_the_rest_stored(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    good = event()
    nul = json.dumps(event()).replace('"n": 1', '"n": "a\\u0000b"')
    other = event()
    outcomes = await store(sessions, good, nul, other)
    assert isinstance(outcomes[0], Stored) and isinstance(outcomes[2], Stored)
    assert isinstance(outcomes[1], Unstorable) and "not storable" in outcomes[1].reason
    assert outcomes[2].seq == outcomes[0].seq + 1  # the refused one took no seq
    await assert_chain_is_gap_free(superuser)


@pytest.mark.parametrize(
    "value",
    [
        '"a\\u0000b"',  # jsonb has no NUL in text
        '"\\ud800 alone"',  # half a surrogate pair, the high half
        '"\\uDC00 alone"',  # the low half
        "0." + "1" * 20_000,  # more digits after the point than numeric holds
    ],
    ids=["nul", "high surrogate", "low surrogate", "long decimal"],
)
async def test_each_document_jsonb_refuses_is_refused_alone(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection, value: str
) -> None:
    """Batches append without a savepoint unless a document holds what jsonb may refuse: each such form must be
    seen as one, or its refusal would fail the whole batch."""
    refused = json.dumps(event()).replace('"n": 1', f'"n": {value}')
    good, pair = event(), json.dumps(event()).replace('"n": 1', '"n": "\\ud83d\\ude00"')  # a pair is stored
    outcomes = await store(sessions, good, refused, pair)
    assert isinstance(outcomes[0], Stored) and isinstance(outcomes[2], Stored)
    assert isinstance(outcomes[1], Unstorable) and "not storable" in outcomes[1].reason
    await assert_chain_is_gap_free(superuser)


async def test_a_refused_event_with_fractions_is_found_too(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    refused = json.dumps(event()).replace('"n": 1', '"n": [1.5e0, "a\\u0000b"]')  # an exponent: through jsonb first
    good = json.dumps(event()).replace('"n": 1', '"n": 2.5e0')
    outcomes = await store(sessions, refused, good)
    assert isinstance(outcomes[0], Unstorable) and isinstance(outcomes[1], Stored)
    await assert_chain_is_gap_free(superuser)


async def test_numbers_jsonb_rewrites_still_verify(sessions: async_sessionmaker[AsyncSession]) -> None:
    """jsonb turns 1e2 into 100 and 1e16 into 10000000000000000: the hash covers what is stored, so the
    chain still verifies afterwards."""
    raw = json.dumps(event()).replace('"n": 1', '"n": [1e2, 1.50, 1e16, -0.0, 12345678901234567890, 0.1]')
    outcomes = await store(sessions, raw)
    assert isinstance(outcomes[0], Stored)
    result = await verify_chain(sessions, full=True, chunk=1000)
    assert result.ok, result


@pytest.mark.parametrize(
    ("number", "exact"),
    [
        ("14400.0", True),  # the SLA targets of every incident event
        ("0.10", True),
        ("-12.30", True),
        ("123456789012345678901234567890.5", True),
        ("1e2", False),
        ("1.5E-7", False),
        ("-0.0", False),
    ],
)
async def test_a_number_is_hashed_as_jsonb_gives_it_back(
    sessions: async_sessionmaker[AsyncSession], number: str, exact: bool
) -> None:
    """Only a number jsonb rewrites (an exponent, a negative zero) sends the event through jsonb before it is hashed;
    any other is hashed from the event as received. Either way the chain verifies against what is stored."""
    raw = json.dumps(event()).replace('"n": 1', f'"n": [{number}]')
    outcomes = await store(sessions, raw)
    assert isinstance(outcomes[0], Stored)
    result = await verify_chain(sessions, full=True, chunk=1000)
    assert result.ok, result
    assert incoming(raw).exact is exact
