"""Database roles (issue #11, finding 1): each service's login role has a password of its own, read from that
service's own setting, and no rights outside its schema. The attack itself (one service's credential used on
another's role, where PostgreSQL checks passwords) is tests/deploy/test_db_credentials.py, on a cluster of its own.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from itsm_shared.db import asyncpg_dsn
from itsm_shared.provision import app_url, scram_verifier
from itsm_shared.settings import ServiceSettings, db_app_password
from itsm_shared.testing import TestDatabase, create_database, drop_database, migrate
from pydantic import ValidationError
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[3]
# The services that exist (a service being built has no main.py yet).
SERVICES = sorted(p.parent.name for p in REPO.glob("services/*/src/*/main.py"))


# ------------------------------------------------------------------------------------------ settings


def test_each_service_reads_only_its_own_password() -> None:
    everyone = {f"ITSM_DB_APP_PASSWORD_{s.upper()}": f"secret-of-{s}" for s in SERVICES}
    for service in SERVICES:
        assert db_app_password(service, everyone) == f"secret-of-{service}"
    assert db_app_password("incident", {"ITSM_DB_APP_PASSWORD_AUTH": "auth's"}) is None


def test_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "incident_db_password"
    secret.write_text("from-the-secret\n")
    assert db_app_password("incident", {"ITSM_DB_APP_PASSWORD_INCIDENT_FILE": str(secret)}) == "from-the-secret"
    with pytest.raises(ValueError, match="ITSM_DB_APP_PASSWORD_INCIDENT_FILE"):
        db_app_password("incident", {"ITSM_DB_APP_PASSWORD_INCIDENT_FILE": str(tmp_path / "missing")})


def test_the_one_shared_password_is_refused() -> None:
    with pytest.raises(ValueError, match="ITSM_DB_APP_PASSWORD_INCIDENT"):
        db_app_password("incident", {"ITSM_DB_APP_PASSWORD": "one-for-all"})
    env = {**os.environ, "ITSM_DB_APP_PASSWORD": "one-for-all", "ITSM_DATABASE_URL": "postgresql://nowhere:1/x"}
    job = subprocess.run(
        [sys.executable, "-m", "itsm_shared.migrate", "incident"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert job.returncode == 2, job.stderr
    assert "ITSM_DB_APP_PASSWORD_INCIDENT" in job.stderr


def test_a_service_logs_in_with_the_password_of_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("p@ss:word/\n")
    url = app_url("postgresql://postgres@db:5432/itsm", "incident")
    settings = ServiceSettings(database_url=url, db_password_file=secret)
    parsed = make_url(settings.database_url)
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == (
        "incident_app",
        "p@ss:word/",
        "db",
        "itsm",
    )
    # A URL that carries its password (Kubernetes builds one from the Secret) keeps it.
    given = ServiceSettings(database_url=app_url(url, "incident", "in-url"), db_password_file=secret)
    assert make_url(given.database_url).password == "in-url"
    with pytest.raises(ValidationError, match="ITSM_DB_PASSWORD_FILE"):
        ServiceSettings(database_url=url, db_password_file=tmp_path / "missing")


def test_the_app_url_never_carries_the_admin_password() -> None:
    url = make_url(app_url("postgresql://postgres:superuser-secret@db:5432/itsm?sslmode=require", "audit"))
    assert (url.username, url.password, url.query) == ("audit_app", None, {"sslmode": "require"})


# ------------------------------------------------------------------------------------------ PostgreSQL


async def test_the_verifier_is_what_postgresql_stores(database: TestDatabase) -> None:
    """The role's password is sent as a SCRAM verifier computed here, never in clear: it must be the one
    PostgreSQL itself computes for that password and salt."""
    conn = await asyncpg.connect(asyncpg_dsn(database.admin_url))
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute("SET LOCAL password_encryption = 'scram-sha-256'")
        await conn.execute("CREATE ROLE itsm_verifier_check LOGIN PASSWORD 'correct horse battery'")
        stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'itsm_verifier_check'")
        salt = base64.b64decode(stored.split("$")[1].split(":")[1])
        assert scram_verifier("correct horse battery", salt=salt) == stored
        assert scram_verifier("correct horse battery") != stored, "a new salt each time"
    finally:
        await transaction.rollback()  # no role is left behind
        await conn.close()


@pytest.fixture(scope="module")
async def every_schema(infra: tuple[str, str]) -> AsyncIterator[TestDatabase]:
    db = await create_database(infra[0], "itsm_test_roles")
    try:
        for service in SERVICES:
            result = migrate(service, db.admin_url)
            assert result.returncode == 0, result.stderr
        yield db
    finally:
        await drop_database(db)


async def test_each_service_role_has_no_rights_on_another_services_schema(every_schema: TestDatabase) -> None:
    admin = await asyncpg.connect(asyncpg_dsn(every_schema.admin_url))
    try:
        tables = {
            schema: await admin.fetchval(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1 LIMIT 1", schema
            )
            for schema in SERVICES
        }
    finally:
        await admin.close()
    assert all(tables.values()), tables
    for service in SERVICES:
        conn = await asyncpg.connect(asyncpg_dsn(every_schema.app_url(service)))
        try:
            assert await conn.fetchval(f'SELECT count(*) >= 0 FROM "{service}"."{tables[service]}"')
            for other in SERVICES:
                if other != service:
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.fetch(f'SELECT * FROM "{other}"."{tables[other]}" LIMIT 1')
            # DML only, even at home.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f'CREATE TABLE "{service}".planted (id int)')
        finally:
            await conn.close()


async def test_the_incident_role_cannot_read_the_signing_keys(every_schema: TestDatabase) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(every_schema.app_url("incident")))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for schema auth"):
            await conn.fetch("SELECT * FROM auth.signing_key")
    finally:
        await conn.close()
