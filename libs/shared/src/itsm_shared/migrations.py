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


def create_shared_tables() -> None:
    """The tables of itsm_shared.models (outbox, inbox, idempotency keys): every service's first migration
    creates them in its own schema by calling this."""
    from alembic import op
    from sqlalchemy.dialects import postgresql

    op.create_table(
        "idempotency_key",
        sa.Column("principal", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("principal", "key"),
    )
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("routing_key", sa.String(length=200), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("published_at IS NULL"),
    )


def drop_shared_tables() -> None:
    from alembic import op

    op.drop_index("ix_outbox_pending", table_name="outbox", postgresql_where=sa.text("published_at IS NULL"))
    for table in SHARED_TABLES:
        op.drop_table(table)
