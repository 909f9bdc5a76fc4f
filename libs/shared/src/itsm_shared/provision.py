"""Per-service database, schema and roles: `<svc>` schema owned by `<svc>_owner` (NOLOGIN, runs migrations),
used by `<svc>_app` (LOGIN, the running service) with no rights elsewhere. Each `<svc>_app` has a password of its
own (`ITSM_DB_APP_PASSWORD_<SVC>`, given to that service's migration job and to that service only), stored as a
SCRAM-SHA-256 verifier computed here, so the password itself never reaches the server or its logs."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os

import asyncpg
from sqlalchemy.engine import URL, make_url

from itsm_shared.db import asyncpg_dsn

# What the running service may do to its own tables. Audit is append-only.
APP_TABLE_PRIVILEGES = {"audit": "SELECT, INSERT"}
DEFAULT_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def owner_role(service: str) -> str:
    return f"{service}_owner"


def app_role(service: str) -> str:
    return f"{service}_app"


def app_url(admin_url: str, service: str, password: str | None = None) -> str:
    """The URL the running service connects with: same server and database, its own login role, and its own
    password or none (never the admin URL's: `URL.set` would keep that one when given None)."""
    admin = make_url(admin_url)
    url = URL.create(admin.drivername, app_role(service), password, admin.host, admin.port, admin.database, admin.query)
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
            await conn.execute(f"ALTER ROLE {app} PASSWORD {_literal(scram_verifier(app_password))}")
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


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, RFC 7677), as `ALTER ROLE ... PASSWORD`
    takes it: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`. PostgreSQL SASLpreps the password
    first; for an ASCII password that is the password itself, so others are handed to the server to hash."""
    if not password.isascii():
        return password
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"
