"""The log's rules: what counts as an event, one record per event id, a gap-free chain whose hashes a third
party can recompute, verification that names the first bad record, and a role that can only append."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from audit import anchors, ingest, queries
from audit.anchors import AnchorKeys
from audit.chain import GENESIS, canonical_json, format_received_at, record_hash
from audit.config import AuditSettings
from audit.errors import AnchorKeyError, InvalidEvent
from audit.ingest import Duplicate, Stored, Unstorable
from audit.verify import verify_chain
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from itsm_shared.db import transaction
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .conftest import ANCHOR_KEYS, ANCHOR_SEED, assert_chain_is_gap_free, event, rewrite_chain


def incoming(e: dict[str, Any] | str) -> ingest.Incoming:
    return ingest.parse_incoming((e if isinstance(e, str) else json.dumps(e)).encode())


async def store(
    sessions: async_sessionmaker[AsyncSession], *events: dict[str, Any] | str, keys: AnchorKeys | None = None
) -> list[Any]:
    async with transaction(sessions) as session:
        return await ingest.store_batch(session, [incoming(e) for e in events], keys)


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


async def test_a_refused_event_with_fractions_is_found_too(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    refused = json.dumps(event()).replace('"n": 1', '"n": [1.5, "a\\u0000b"]')
    good = json.dumps(event()).replace('"n": 1', '"n": 2.5')
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


# ---------------------------------------------------------------- verifying


async def test_verify_walks_everything_then_only_what_is_new(sessions: async_sessionmaker[AsyncSession]) -> None:
    await store(sessions, *[event() for _ in range(3)])
    full = await verify_chain(sessions, full=True, chunk=2)
    assert full.ok and full.first_bad_seq is None and full.from_seq == 1 and full.checked == full.last_seq
    nothing_new = await verify_chain(sessions, full=False, chunk=2)
    assert nothing_new.ok and nothing_new.checked == 0
    await store(sessions, *[event() for _ in range(4)])
    incremental = await verify_chain(sessions, full=False, chunk=2)
    assert incremental.ok and incremental.checked == 4 and incremental.from_seq == full.last_seq + 1


async def test_a_changed_event_is_found_and_named_by_its_seq(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    outcomes = await store(sessions, *[event() for _ in range(3)])
    target = outcomes[1].seq
    assert (await verify_chain(sessions, full=True, chunk=1000)).ok
    original = await superuser.fetchval("SELECT event::text FROM audit_event WHERE seq = $1", target)
    try:
        # A superuser can switch the append-only triggers off; the chain still tells.
        async with superuser.transaction():
            await superuser.execute("SET LOCAL session_replication_role = replica")
            await superuser.execute(
                "UPDATE audit_event SET event = jsonb_set(event, '{data,n}', '2') WHERE seq = $1", target
            )
        result = await verify_chain(sessions, full=True, chunk=2)  # stops early, with the next chunk in flight
        assert not result.ok and result.first_bad_seq == target and result.reason == "hash does not match the record"
    finally:
        async with superuser.transaction():
            await superuser.execute("SET LOCAL session_replication_role = replica")
            await superuser.execute("UPDATE audit_event SET event = $2::jsonb WHERE seq = $1", target, original)
    assert (await verify_chain(sessions, full=True, chunk=1000)).ok


async def test_a_rewritten_hash_breaks_the_link_to_the_next_record(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    outcomes = await store(sessions, *[event() for _ in range(3)])
    target = outcomes[1].seq
    original = await superuser.fetchval("SELECT hash FROM audit_event WHERE seq = $1", target)
    try:
        async with superuser.transaction():
            await superuser.execute("SET LOCAL session_replication_role = replica")
            await superuser.execute("UPDATE audit_event SET hash = $2 WHERE seq = $1", target, "f" * 64)
        result = await verify_chain(sessions, full=True, chunk=1000)
        assert not result.ok and result.first_bad_seq == target
    finally:
        async with superuser.transaction():
            await superuser.execute("SET LOCAL session_replication_role = replica")
            await superuser.execute("UPDATE audit_event SET hash = $2 WHERE seq = $1", target, original)


async def test_a_deleted_record_is_named_as_missing(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    outcomes = await store(sessions, *[event() for _ in range(3)])
    target = outcomes[1].seq
    row = await superuser.fetchrow("SELECT * FROM audit_event WHERE seq = $1", target)
    assert row is not None
    try:
        async with superuser.transaction():
            await superuser.execute("SET LOCAL session_replication_role = replica")
            await superuser.execute("DELETE FROM audit_event WHERE seq = $1", target)
        result = await verify_chain(sessions, full=True, chunk=1000)
        assert not result.ok and result.first_bad_seq == target and result.reason == "record missing"
    finally:
        columns = list(row.keys())
        placeholders = ", ".join(f"${i + 1}" for i in range(len(columns)))
        await superuser.execute(
            f"INSERT INTO audit_event ({', '.join(columns)}) VALUES ({placeholders})", *row.values()
        )
    assert (await verify_chain(sessions, full=True, chunk=1000)).ok


async def test_tampering_after_the_last_checkpoint_is_found_without_a_full_walk(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    assert (await verify_chain(sessions, full=False, chunk=1000)).ok  # checkpoint at the current end
    outcomes = await store(sessions, *[event() for _ in range(2)])
    target = outcomes[0].seq
    original = await superuser.fetchval("SELECT event::text FROM audit_event WHERE seq = $1", target)
    try:
        async with superuser.transaction():
            await superuser.execute("SET LOCAL session_replication_role = replica")
            await superuser.execute("UPDATE audit_event SET subject = 'x', event = '{}'::jsonb WHERE seq = $1", target)
        result = await verify_chain(sessions, full=False, chunk=1000)
        assert not result.ok and result.first_bad_seq == target and result.checked == 1
    finally:
        async with superuser.transaction():
            await superuser.execute("SET LOCAL session_replication_role = replica")
            await superuser.execute("UPDATE audit_event SET event = $2::jsonb WHERE seq = $1", target, original)
    assert (await verify_chain(sessions, full=False, chunk=1000)).ok


async def test_a_changed_checkpointed_record_fails_the_incremental_walk(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    await store(sessions, event())
    last = (await verify_chain(sessions, full=False, chunk=1000)).last_seq  # a checkpoint at `last`
    original = await superuser.fetchval("SELECT hash FROM audit_event WHERE seq = $1", last)
    try:
        async with superuser.transaction():
            await superuser.execute("SET LOCAL session_replication_role = replica")
            await superuser.execute("UPDATE audit_event SET hash = $2 WHERE seq = $1", last, "0" * 64)
        result = await verify_chain(sessions, full=False, chunk=1000)
        assert (
            not result.ok and result.first_bad_seq == last and result.reason == "record at the last checkpoint changed"
        )
    finally:
        async with superuser.transaction():
            await superuser.execute("SET LOCAL session_replication_role = replica")
            await superuser.execute("UPDATE audit_event SET hash = $2 WHERE seq = $1", last, original)
    assert (await verify_chain(sessions, full=False, chunk=1000)).ok


# ---------------------------------------------------------------- anchors (issue #11, finding 15)


async def test_each_batch_is_signed_by_the_anchor_key(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    outcomes = await store(sessions, event(), event(), event())
    first, last = outcomes[0].seq, outcomes[-1].seq
    anchor = await superuser.fetchrow("SELECT * FROM audit_anchor WHERE seq = $1", last)
    assert anchor is not None and anchor["from_seq"] == first and anchor["kid"] == ANCHOR_KEYS.kid
    assert await superuser.fetchval("SELECT count(*) FROM audit_anchor WHERE seq >= $1 AND seq < $2", first, last) == 0
    digest = await superuser.fetchval("SELECT hash FROM audit_event WHERE seq = $1", last)
    # Anyone with the public key checks it: Ed25519 over itsm-audit-anchor:<from_seq>:<seq>:<hash>.
    public = Ed25519PublicKey.from_public_bytes(anchors.decode(ANCHOR_KEYS.public_keys()[0][1]))
    public.verify(anchors.decode(anchor["signature"]), f"itsm-audit-anchor:{first}:{last}:{digest}".encode())
    assert (await verify_chain(sessions, full=True, chunk=2)).ok


async def _attack(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection, *, drop_anchors: bool
) -> tuple[int, int, dict[int, str], list[asyncpg.Record]]:
    """The attack of finding 15: the table's owner changes one record and recomputes every hash after it, so the
    chain links and re-hashes as before. Returns (target, the first seq after it, originals, dropped anchors)."""
    await store(sessions, event(n=1))
    target = (await store(sessions, event(n=2)))[0].seq  # a batch of its own
    after = (await store(sessions, event(n=3), event(n=4)))[0].seq
    assert (await verify_chain(sessions, full=True, chunk=1000)).ok  # a checkpoint at the end
    originals = {
        r["seq"]: r["event"]
        for r in await superuser.fetch("SELECT seq, event::text AS event FROM audit_event WHERE seq >= $1", target)
    }
    dropped = await superuser.fetch("SELECT * FROM audit_anchor WHERE seq >= $1", target) if drop_anchors else []
    forged = json.loads(originals[target])
    forged["data"] = {"n": 2, "note": "never happened"}
    await rewrite_chain(superuser, target, {target: json.dumps(forged)}, drop_anchors=drop_anchors)
    return target, after, originals, dropped


async def _undo(
    sessions: async_sessionmaker[AsyncSession],
    superuser: asyncpg.Connection,
    target: int,
    originals: dict[int, str],
    dropped: list[asyncpg.Record],
) -> None:
    """Put back what the attack changed: only the holder of the anchor key can re-sign."""
    await rewrite_chain(superuser, target, originals, anchors_back=dropped, keys=ANCHOR_KEYS)
    assert (await verify_chain(sessions, full=True, chunk=1000)).ok


async def test_a_consistent_rewrite_by_the_table_owner_is_found(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    """Finding 15: without a secret, the rewritten chain verified as intact (every hash and link recomputed)."""
    target, _, originals, dropped = await _attack(sessions, superuser, drop_anchors=False)
    try:
        changed = await superuser.fetchval("SELECT event->'data'->>'note' FROM audit_event WHERE seq = $1", target)
        assert changed == "never happened"
        full = await verify_chain(sessions, full=True, chunk=2)
        assert not full.ok and full.first_bad_seq == target and full.reason == "anchor signature does not match"
        incremental = await verify_chain(sessions, full=False, chunk=1000)  # its checkpoints were removed too
        assert not incremental.ok and incremental.first_bad_seq == target
    finally:
        await _undo(sessions, superuser, target, originals, dropped)


async def test_a_rewrite_that_also_removes_the_anchors_is_found_and_new_batches_do_not_cover_it(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    """The owner removes the anchors that would fail; the records they covered are then covered by none, and the
    writer's next batch signs only itself: it does not vouch for the stretch before it."""
    target, _, originals, dropped = await _attack(sessions, superuser, drop_anchors=True)
    try:
        result = await verify_chain(sessions, full=True, chunk=1000)
        assert not result.ok and result.first_bad_seq == target and result.reason == "no anchor covers the record"
        newer = await store(sessions, event(n=5))
        assert newer[0].seq == result.last_seq + 1
        again = await verify_chain(sessions, full=True, chunk=1000)
        assert not again.ok and again.first_bad_seq == target and again.reason == "no anchor covers the record"
        assert not (await verify_chain(sessions, full=False, chunk=1000)).ok
    finally:
        await _undo(sessions, superuser, target, originals, dropped)


async def test_an_anchor_by_another_key_is_refused(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    """The owner signs the rewritten chain with a key of its own: verify knows only the service's keys."""
    target, _, originals, dropped = await _attack(sessions, superuser, drop_anchors=False)
    try:
        await rewrite_chain(superuser, target, keys=AnchorKeys.of(os.urandom(32)))
        result = await verify_chain(sessions, full=True, chunk=1000)
        assert not result.ok and result.first_bad_seq == target
        assert result.reason is not None and result.reason.startswith("anchor signed by an unknown key")
    finally:
        await _undo(sessions, superuser, target, originals, dropped)


async def test_a_former_anchor_key_still_verifies_what_it_signed(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    """Rotating the anchor key: the new key signs, the former one's public half (ITSM_AUDIT_ANCHOR_PUBLIC_KEYS)
    verifies the anchors it signed; without it they are refused."""
    await store(sessions, event())
    rotated = AnchorKeys.of(os.urandom(32), [anchors.decode(ANCHOR_KEYS.public_keys()[0][1])])
    assert [current for _, _, current in rotated.public_keys()] == [True, False]
    seq = (await store(sessions, event(), keys=rotated))[0].seq
    try:
        assert (await verify_chain(sessions, full=True, chunk=1000, keys=rotated)).ok
        refused = await verify_chain(sessions, full=True, chunk=1000, keys=AnchorKeys.of(os.urandom(32)))
        assert not refused.ok and refused.reason is not None and "unknown key" in refused.reason
    finally:
        await rewrite_chain(superuser, seq, keys=ANCHOR_KEYS)  # the session's key again, for the other tests
    assert (await verify_chain(sessions, full=True, chunk=1000)).ok


async def test_records_from_before_anchoring_are_adopted_only_when_asked(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    """A log upgraded from before anchoring: its records carry no anchor (here: every anchor removed) until the
    holder of the key asks for them to be signed (ITSM_AUDIT_ANCHOR_ADOPT_THROUGH)."""
    await store(sessions, event())
    saved = await superuser.fetch("SELECT * FROM audit_anchor")
    await rewrite_chain(superuser, 1, drop_anchors=True)
    try:
        last = await superuser.fetchval("SELECT max(seq) FROM audit_event")
        result = await verify_chain(sessions, full=True, chunk=1000)
        assert not result.ok and result.first_bad_seq == 1 and result.reason == "no anchor covers the record"
        async with transaction(sessions) as session:
            assert await ingest.adopt_unanchored(session, ANCHOR_KEYS, last)
        assert (await verify_chain(sessions, full=True, chunk=1000)).ok
        async with transaction(sessions) as session:
            assert not await ingest.adopt_unanchored(session, ANCHOR_KEYS, last)  # once
    finally:
        if not (await verify_chain(sessions, full=True, chunk=1000)).ok:
            await rewrite_chain(superuser, 1, drop_anchors=True, anchors_back=saved, keys=ANCHOR_KEYS)
    assert (await verify_chain(sessions, full=True, chunk=1000)).ok


def test_no_anchor_key_no_start(tmp_path: Path) -> None:
    """The service refuses to start without a usable anchor key, and says what to set."""
    with pytest.raises(AnchorKeyError, match="ITSM_AUDIT_ANCHOR_KEY and ITSM_AUDIT_ANCHOR_KEY_FILE are unset"):
        anchors.load_anchor_keys(AuditSettings(audit_anchor_key=None, audit_anchor_key_file=None))
    with pytest.raises(AnchorKeyError, match="not 32 bytes"):
        anchors.load_anchor_keys(AuditSettings(audit_anchor_key=SecretStr("c2hvcnQ"), audit_anchor_key_file=None))
    path = tmp_path / "anchor-key"
    path.write_text(base64.urlsafe_b64encode(ANCHOR_SEED).decode() + "\n")
    from_file = anchors.load_anchor_keys(AuditSettings(audit_anchor_key=None, audit_anchor_key_file=path))
    assert from_file.kid == ANCHOR_KEYS.kid


# ---------------------------------------------------------------- least privilege


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_event SET subject = 'changed' WHERE seq = 1",
        "DELETE FROM audit_event WHERE seq = 1",
        "TRUNCATE audit_event",
        "UPDATE audit_checkpoint SET hash = 'x'",
        "DELETE FROM audit_checkpoint",
        "TRUNCATE audit_checkpoint",
    ],
)
async def test_the_service_role_cannot_change_or_remove_records(
    as_service_role: asyncpg.Connection, statement: str
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await as_service_role.execute(statement)


async def test_the_service_role_may_read_and_append(as_service_role: asyncpg.Connection) -> None:
    privileges = await as_service_role.fetch(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
        "WHERE grantee = 'audit_app' AND table_name IN ('audit_event', 'audit_checkpoint') ORDER BY 1, 2"
    )
    assert [(r["table_name"], r["privilege_type"]) for r in privileges] == [
        ("audit_checkpoint", "INSERT"),
        ("audit_checkpoint", "SELECT"),
        ("audit_event", "INSERT"),
        ("audit_event", "SELECT"),
    ]


async def test_even_the_owner_cannot_update_while_the_triggers_stand(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    await store(sessions, event())
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await superuser.execute("UPDATE audit_event SET subject = 'changed' WHERE seq = 1")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await superuser.execute("TRUNCATE audit_event")


# ---------------------------------------------------------------- type filter


@pytest.mark.parametrize(
    ("pattern", "parsed"),
    [
        ("incident.created", ("exact", "itsm.incident.created")),
        ("itsm.incident.created", ("exact", "itsm.incident.created")),
        ("incident.*", ("prefix", "itsm.incident.")),
        ("itsm.incident.*", ("prefix", "itsm.incident.")),
        ("*", None),
    ],
)
def test_type_patterns(pattern: str, parsed: Any) -> None:
    assert queries.parse_type_pattern(pattern) == parsed


@pytest.mark.parametrize("pattern", ["incident.%", "Incident.created", "incident.*.x", "", "incident created"])
def test_malformed_type_patterns_are_refused(pattern: str) -> None:
    from itsm_shared.errors import Invalid

    with pytest.raises(Invalid):
        queries.parse_type_pattern(pattern)
