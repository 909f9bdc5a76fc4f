"""Per-service database, schema and roles: `<svc>` schema owned by `<svc>_owner` (NOLOGIN, runs migrations),
used by `<svc>_app` (LOGIN, the running service) with no rights elsewhere."""

from __future__ import annotations

import contextlib

import asyncpg
from sqlalchemy.engine import make_url

from itsm_shared.db import asyncpg_dsn

# What the running service may do to its own tables. Audit is append-only.
APP_TABLE_PRIVILEGES = {"audit": "SELECT, INSERT"}
DEFAULT_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def owner_role(service: str) -> str:
    return f"{service}_owner"


def app_role(service: str) -> str:
    return f"{service}_app"


def app_url(admin_url: str, service: str, password: str | None = None) -> str:
    """The URL the running service connects with: same server and database, its own login role."""
    url = make_url(admin_url).set(username=app_role(service), password=password)
    return url.render_as_string(hide_password=False)


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe identifier {name!r}")
    return f'"{name}"'


async def ensure_database(admin_url: str) -> None:
    url = make_url(admin_url)
    database = url.database or "postgres"
    conn = await asyncpg.connect(asyncpg_dsn(url.set(database="postgres").render_as_string(False)))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f"CREATE DATABASE {_ident(database)}")
    finally:
        await conn.close()


async def ensure_schema(admin_url: str, service: str, app_password: str | None) -> None:
    owner, app, schema = _ident(owner_role(service)), _ident(app_role(service)), _ident(service)
    database = _ident(make_url(admin_url).database or "postgres")
    privileges = APP_TABLE_PRIVILEGES.get(service, DEFAULT_TABLE_PRIVILEGES)
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        # Roles are cluster-wide; two provisioners racing on a fresh cluster must not fail.
        await conn.execute("SELECT pg_advisory_lock(hashtext('itsm-provision'))")
        for role, login in ((owner_role(service), False), (app_role(service), True)):
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                await conn.execute(f"CREATE ROLE {_ident(role)} {'LOGIN' if login else 'NOLOGIN'}")
        if app_password:
            await conn.execute(f"ALTER ROLE {app} PASSWORD {_literal(app_password)}")
        await conn.execute(f"GRANT {owner} TO CURRENT_USER")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {owner}")
        await conn.execute(f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC")
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {app}")
        await conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {app}")
        await conn.execute(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT {privileges} ON TABLES TO {app}"
        )
        await conn.execute(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {app}"
        )
        await conn.execute(f"GRANT {privileges} ON ALL TABLES IN SCHEMA {schema} TO {app}")
        await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {app}")
        await conn.execute(f"ALTER ROLE {app} IN DATABASE {database} SET search_path = {schema}")
        await conn.execute("SELECT pg_advisory_unlock(hashtext('itsm-provision'))")
    finally:
        await conn.close()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
