"""Verifying the chain: walk it from the last checkpoint (or from the first record), re-hash every record, check
every link and that no seq is missing, and check the anchors (`audit.anchors`): each signature against the hash
the chain has where it ends, and that they cover the chain end to end, so a consistent rewrite by whoever can
write the table (triggers off, every hash after the change recomputed) is found too. An intact walk appends a
checkpoint where it ended."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from itsm_shared.db import transaction
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from audit.anchors import AnchorKeys, anchor_keys
from audit.chain import GENESIS, canonical_json, format_received_at, record_hash
from audit.queries import walk
from audit.schemas import VerifyResult

UNANCHORED = "no anchor covers the record"

_CHECKPOINT = text(
    """
    SELECT c.seq, c.hash, a.from_seq, a.kid, a.signature
    FROM audit_checkpoint c JOIN audit_anchor a ON a.seq = c.seq
    ORDER BY c.seq DESC LIMIT 1
    """
)


@dataclass
class Walk:
    """Where a walk along the chain is: the hash of the last record checked, the seq expected next, and the first
    seq no anchor covers yet (where the next anchor must start)."""

    keys: AnchorKeys
    prev: str
    expected: int
    covered: int
    checked: int = 0

    def check(self, rows: Sequence[Sequence[Any]]) -> tuple[int, str] | None:
        """(first bad seq, why), or None when the rows hold. Pure CPU: run off the event loop."""
        last_moment: datetime | None = None
        received = ""
        for seq, event_id, _type, _correlation, received_at, event, prev_hash, digest, start, kid, signature in rows:
            if seq != self.expected:
                return self.expected, "record missing"
            self.checked += 1
            if prev_hash != self.prev:
                return seq, "does not link to the record before"
            if received_at != last_moment:  # a batch shares one received_at: format it once
                last_moment, received = received_at, format_received_at(received_at)
            try:
                form = canonical_json(json.loads(event))
            except (ValueError, RecursionError):
                return seq, "event unreadable"
            if record_hash(self.prev, seq, str(event_id), received, form) != digest:
                return seq, "hash does not match the record"
            self.prev = digest
            self.expected += 1
            if signature is None:
                continue
            if start != self.covered:  # the anchors must cover the chain end to end
                return (self.covered, UNANCHORED) if start > self.covered else (seq, "anchor overlaps the one before")
            if (why := self.keys.check(start, seq, digest, kid, signature)) is not None:
                return start, why
            self.covered = seq + 1
        return None


def _result(
    ok: bool, checked: int, bad: int | None, start: int, last: int, full: bool, why: str | None = None
) -> VerifyResult:
    return VerifyResult(ok=ok, checked=checked, first_bad_seq=bad, from_seq=start, last_seq=last, full=full, reason=why)


async def verify_chain(
    sessions: async_sessionmaker[AsyncSession], *, full: bool, chunk: int, keys: AnchorKeys | None = None
) -> VerifyResult:
    """Walk the chain from the last checkpoint (or from seq 1 when `full`) to the newest record; when it holds,
    append a checkpoint there so the next verification starts from it. `keys`: the process's anchor keys."""
    keys = anchor_keys() if keys is None else keys
    async with sessions() as session:
        last_seq = (await session.execute(text("SELECT max(seq) FROM audit_event"))).scalar() or 0
        # The newest checkpoint at an anchor (one from before anchoring has none: the walk starts earlier).
        checkpoint = None if full else (await session.execute(_CHECKPOINT)).first()
        start, prev = 1, GENESIS
        if checkpoint is not None:
            anchored = (
                await session.execute(text("SELECT hash FROM audit_event WHERE seq = :s"), {"s": checkpoint.seq})
            ).scalar()
            if anchored != checkpoint.hash:
                lost = "record at the last checkpoint changed" if anchored else "record at the last checkpoint missing"
                return _result(False, 0, checkpoint.seq, checkpoint.seq, last_seq, full, lost)
            why = keys.check(checkpoint.from_seq, checkpoint.seq, checkpoint.hash, checkpoint.kid, checkpoint.signature)
            if why is not None:
                return _result(False, 0, checkpoint.from_seq, checkpoint.seq, last_seq, full, why)
            start, prev = checkpoint.seq + 1, checkpoint.hash
    state = Walk(keys=keys, prev=prev, expected=start, covered=start)
    rows_iter = walk(sessions, start, last_seq, chunk, anchors=True).__aiter__()
    pending = asyncio.ensure_future(anext(rows_iter, None))
    try:
        while (rows := await pending) is not None:
            pending = asyncio.ensure_future(anext(rows_iter, None))  # fetch the next chunk while this one hashes
            bad = await asyncio.to_thread(state.check, rows)
            if bad is not None:
                return _result(False, state.checked, bad[0], start, last_seq, full, bad[1])
    finally:
        pending.cancel()  # stopped early: the next chunk's query is not needed
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending
        await rows_iter.aclose()  # type: ignore[attr-defined]
    if state.expected <= last_seq:  # rows vanished from the end while we walked
        return _result(False, state.checked, state.expected, start, last_seq, full, "record missing")
    if state.covered <= last_seq:  # the newest records carry no anchor
        return _result(False, state.checked, state.covered, start, last_seq, full, UNANCHORED)
    if last_seq >= start:
        async with transaction(sessions) as session:
            await session.execute(
                text("INSERT INTO audit_checkpoint (seq, hash) VALUES (:s, :h) ON CONFLICT (seq) DO NOTHING"),
                {"s": last_seq, "h": state.prev},
            )
    return _result(True, state.checked, None, start, last_seq, full)
