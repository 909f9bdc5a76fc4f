"""Verifying the log's chain: a full walk and an incremental one from the last checkpoint, each naming the first
bad record when a record was changed, re-hashed or deleted."""

from __future__ import annotations

import asyncpg
from audit.verify import verify_chain
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .conftest import event, store, tamper

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
        await tamper(
            superuser, "UPDATE audit_event SET event = jsonb_set(event, '{data,n}', '2') WHERE seq = $1", target
        )
        result = await verify_chain(sessions, full=True, chunk=2)  # stops early, with the next chunk in flight
        assert not result.ok and result.first_bad_seq == target and result.reason == "hash does not match the record"
    finally:
        await tamper(superuser, "UPDATE audit_event SET event = $2::jsonb WHERE seq = $1", target, original)
    assert (await verify_chain(sessions, full=True, chunk=1000)).ok


async def test_a_rewritten_hash_breaks_the_link_to_the_next_record(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    outcomes = await store(sessions, *[event() for _ in range(3)])
    target = outcomes[1].seq
    original = await superuser.fetchval("SELECT hash FROM audit_event WHERE seq = $1", target)
    try:
        await tamper(superuser, "UPDATE audit_event SET hash = $2 WHERE seq = $1", target, "f" * 64)
        result = await verify_chain(sessions, full=True, chunk=1000)
        assert not result.ok and result.first_bad_seq == target
    finally:
        await tamper(superuser, "UPDATE audit_event SET hash = $2 WHERE seq = $1", target, original)


async def test_a_deleted_record_is_named_as_missing(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    outcomes = await store(sessions, *[event() for _ in range(3)])
    target = outcomes[1].seq
    row = await superuser.fetchrow("SELECT * FROM audit_event WHERE seq = $1", target)
    assert row is not None
    try:
        await tamper(superuser, "DELETE FROM audit_event WHERE seq = $1", target)
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
        await tamper(superuser, "UPDATE audit_event SET subject = 'x', event = '{}'::jsonb WHERE seq = $1", target)
        result = await verify_chain(sessions, full=False, chunk=1000)
        assert not result.ok and result.first_bad_seq == target and result.checked == 1
    finally:
        await tamper(superuser, "UPDATE audit_event SET event = $2::jsonb WHERE seq = $1", target, original)
    assert (await verify_chain(sessions, full=False, chunk=1000)).ok


async def test_a_changed_checkpointed_record_fails_the_incremental_walk(
    sessions: async_sessionmaker[AsyncSession], superuser: asyncpg.Connection
) -> None:
    await store(sessions, event())
    last = (await verify_chain(sessions, full=False, chunk=1000)).last_seq  # a checkpoint at `last`
    original = await superuser.fetchval("SELECT hash FROM audit_event WHERE seq = $1", last)
    try:
        await tamper(superuser, "UPDATE audit_event SET hash = $2 WHERE seq = $1", last, "0" * 64)
        result = await verify_chain(sessions, full=False, chunk=1000)
        assert (
            not result.ok and result.first_bad_seq == last and result.reason == "record at the last checkpoint changed"
        )
    finally:
        await tamper(superuser, "UPDATE audit_event SET hash = $2 WHERE seq = $1", last, original)
    assert (await verify_chain(sessions, full=False, chunk=1000)).ok
