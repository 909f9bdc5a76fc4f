"""Every service's models and its migrations agree: the migrations, run on an empty database, build exactly what
the models declare (alembic check). Each service runs in its own process, as its deployment's migration job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from itsm_shared.testing import TestDatabase, create_database, drop_database, migrate

REPO = Path(__file__).resolve().parents[3]
SERVICES = sorted(p.parent.name for p in REPO.glob("services/*/pyproject.toml"))


@pytest.fixture(scope="module")
async def empty_database(infra: tuple[str, str]) -> AsyncIterator[TestDatabase]:
    db = await create_database(infra[0], "itsm_test_migrations")
    yield db
    await drop_database(db)


def test_every_service_is_checked() -> None:
    assert {"auth", "incident", "problem", "change", "audit"} <= set(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_models_and_migrations_agree(empty_database: TestDatabase, service: str) -> None:
    upgraded = migrate(service, empty_database.admin_url)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    checked = migrate(service, empty_database.admin_url, "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
