"""`python -m itsm_shared.migrate <service> [--revision MSG | --check]`: provision, then migrate to head.

Run with ITSM_DATABASE_URL set to an administrative URL (it creates the database, schema and roles), and with
the service's own `ITSM_DB_APP_PASSWORD_<SERVICE>` (or `..._FILE`) to set the password of `<service>_app`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

from alembic import command

from itsm_shared.migrations import alembic_config
from itsm_shared.provision import ensure_database, ensure_schema
from itsm_shared.settings import ServiceSettings, db_app_password


def migrations_dir(service: str) -> Path:
    package = importlib.import_module(service)
    assert package.__file__
    return Path(package.__file__).resolve().parents[2] / "migrations"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("service")
    parser.add_argument("--revision", metavar="MESSAGE", help="autogenerate a new revision")
    parser.add_argument("--check", action="store_true", help="fail if the models differ from the migrations")
    args = parser.parse_args(argv)
    try:
        password = db_app_password(args.service)
    except ValueError as exc:
        parser.error(str(exc))
    admin_url = ServiceSettings().database_url
    asyncio.run(ensure_database(admin_url))
    asyncio.run(ensure_schema(admin_url, args.service, password))
    importlib.import_module(f"{args.service}.models")
    cfg = alembic_config(args.service, migrations_dir(args.service), admin_url)
    if args.revision:
        command.upgrade(cfg, "head")
        command.revision(cfg, message=args.revision, autogenerate=True)
    elif args.check:
        command.check(cfg)
    else:
        command.upgrade(cfg, "head")
    return 0


if __name__ == "__main__":
    sys.exit(main())
