"""Least privilege on the log: the service's role can only read and append, and not even the owner updates while
the append-only triggers stand."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .conftest import event, store

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
