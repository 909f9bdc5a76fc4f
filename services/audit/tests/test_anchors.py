"""The log's anchors (issue #11, finding 15): each batch signed by the anchor key, so that a consistent rewrite
by the owner of the tables is found; key rotation, adopting records from before anchoring, no key no start."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import asyncpg
import pytest
from audit import anchors, ingest
from audit.anchors import AnchorKeys
from audit.config import AuditSettings
from audit.errors import AnchorKeyError
from audit.verify import verify_chain
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from itsm_shared.db import transaction
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .conftest import ANCHOR_KEYS, ANCHOR_SEED, event, rewrite_chain, store

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
