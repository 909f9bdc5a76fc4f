"""Verifying the chain: walk it from the last checkpoint (or from the first record), re-hash every record, check
every link and that no seq is missing; an intact walk appends a checkpoint where it ended."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from itsm_shared.db import transaction
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from audit.chain import GENESIS, canonical_json, format_received_at, record_hash
from audit.queries import walk
from audit.schemas import VerifyResult


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


def _result(
    ok: bool, checked: int, bad: int | None, start: int, last: int, full: bool, why: str | None = None
) -> VerifyResult:
    return VerifyResult(ok=ok, checked=checked, first_bad_seq=bad, from_seq=start, last_seq=last, full=full, reason=why)


async def verify_chain(sessions: async_sessionmaker[AsyncSession], *, full: bool, chunk: int) -> VerifyResult:
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
                return _result(False, 0, checkpoint.seq, checkpoint.seq, last_seq, full, lost)
            start, prev = checkpoint.seq + 1, checkpoint.hash
    checked = 0
    expected = start
    rows_iter = walk(sessions, start, last_seq, chunk).__aiter__()
    pending = asyncio.ensure_future(anext(rows_iter, None))
    try:
        while (rows := await pending) is not None:
            pending = asyncio.ensure_future(anext(rows_iter, None))  # fetch the next chunk while this one hashes
            bad, why, prev, n = await asyncio.to_thread(check_chunk, rows, prev, expected)
            checked += n
            if bad is not None:
                return _result(False, checked, bad, start, last_seq, full, why)
            expected += n
    finally:
        pending.cancel()  # stopped early: the next chunk's query is not needed
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending
        await rows_iter.aclose()  # type: ignore[attr-defined]
    if expected <= last_seq:  # rows vanished from the end while we walked
        return _result(False, checked, expected, start, last_seq, full, "record missing")
    if last_seq >= start:
        async with transaction(sessions) as session:
            await session.execute(
                text("INSERT INTO audit_checkpoint (seq, hash) VALUES (:s, :h) ON CONFLICT (seq) DO NOTHING"),
                {"s": last_seq, "h": prev},
            )
    return _result(True, checked, None, start, last_seq, full)
