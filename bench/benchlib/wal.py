"""PostgreSQL WAL written over a window: pg_current_wal_lsn() at its start, and at its end
`pg_wal_lsn_diff(pg_current_wal_lsn(), <start>)`, in bytes.

The WAL is the whole server's: every database on it and anything else that writes there while the window is open
(other benchmarks, test suites, autovacuum) counts too, as PostgreSQL's own processes do in the CPU figures."""

from __future__ import annotations

from typing import Any


class WalMeter:
    """Reads the WAL position on a connection of its own to `admin_dsn` (a superuser's URL asyncpg takes)."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.backend_pid = 0
        self._connection: Any = None

    async def start(self) -> None:
        import asyncpg

        self._connection = await asyncpg.connect(self.admin_dsn)
        self.backend_pid = int(await self._connection.fetchval("SELECT pg_backend_pid()"))

    async def position(self) -> int:
        """The current WAL insert position (an LSN, as asyncpg gives a pg_lsn: an integer)."""
        return int(await self._connection.fetchval("SELECT pg_current_wal_lsn()"))

    async def bytes_since(self, start: int) -> int:
        """WAL bytes written from the position `start` until now."""
        return int(await self._connection.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", start))

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
