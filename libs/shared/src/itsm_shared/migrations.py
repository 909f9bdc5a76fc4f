"""What every service's alembic env.py does: run as the schema owner, inside the service's schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from alembic import context
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from itsm_shared.db import async_url
from itsm_shared.provision import owner_role


def alembic_config(service: str, migrations_dir: Path, admin_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", admin_url.replace("%", "%%"))
    cfg.attributes["service"] = service
    return cfg


def _configure(connection: Connection, service: str, metadata: sa.MetaData) -> None:
    connection.execute(sa.text(f'SET ROLE "{owner_role(service)}"'))
    connection.execute(sa.text(f'SET search_path TO "{service}"'))
    connection.commit()  # session-level settings; the migrations then run in their own transaction
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=service,
        compare_type=True,
        # The version table lives in the schema too; it is alembic's, not the models'.
        include_name=lambda name, type_, _parents: not (type_ == "table" and name == "alembic_version"),
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(service: str, metadata: sa.MetaData) -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure, service, metadata)
            await connection.commit()
    finally:
        await engine.dispose()


def run_env(metadata: sa.MetaData) -> None:
    """Called by services/<name>/migrations/env.py."""
    service = context.config.attributes["service"]
    asyncio.run(_run_async(service, metadata))


SHARED_TABLES = ("idempotency_key", "inbox", "outbox")


def _shared_tables() -> list[sa.Table]:
    from sqlmodel import SQLModel

    import itsm_shared.models  # noqa: F401  (defines the tables)

    return [SQLModel.metadata.tables[name] for name in SHARED_TABLES]


def create_shared_tables() -> None:
    """Create the tables of itsm_shared.models (outbox, inbox, idempotency keys), with their indexes, from their
    one definition: every service's first migration calls this in its own schema."""
    from alembic import op

    bind = op.get_bind()
    for table in _shared_tables():
        table.to_metadata(sa.MetaData()).create(bind)


def drop_shared_tables() -> None:
    from alembic import op

    bind = op.get_bind()
    for table in reversed(_shared_tables()):
        table.to_metadata(sa.MetaData()).drop(bind)
