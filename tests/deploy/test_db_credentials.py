"""Issue #11, finding 1 (the database part): every `<service>_app` role had the same password, so code running in
any service could log in as every other service's role. Now each role has a password of its own, given to that
service's migration job (which sets it) and to that service only: by the local runner (generated per run dir,
0600, unless the operator gives them), by docker-compose (one secret per service) and by the Helm chart (one
Secret per service, tests/deploy/test_k8s_secrets.py).

The machine's PostgreSQL trusts 127.0.0.1, where no password is checked at all; so the attack runs against a
throwaway cluster of its own (initdb in a temporary directory, another port, scram-sha-256 for every connection),
never touching the machine's clusters: the runner migrates and starts two services on it, each logs in with its
own password, and one service's credential does not open another's role.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import configs
import processes
import pytest
import service_table as services
import stack
import yaml
from itsm_shared.testing import remove_topology
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[2]
DB_VARIABLE = "ITSM_DB_APP_PASSWORD"


def _own(name: str) -> str:
    return f"{DB_VARIABLE}_{name.upper()}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("ITSM_"):
            monkeypatch.delenv(key)
    return monkeypatch


# ------------------------------------------------------------------------------------------ the runner


def test_runner_generates_one_password_per_service_and_gives_each_only_its_own(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    admin = "postgresql://postgres:the-superusers-password@127.0.0.1:5432/itsm"
    runner = stack.Stack(stack.StackSettings.isolated(tmp_path, services=(), admin_database_url=admin))
    files: dict[str, Path] = {}
    for name in services.names():
        env = runner.service_env(name)
        # A service's URL names its own role, and never carries the superuser's password (it once did).
        assert not [v for v in env.values() if "the-superusers-password" in v], name
        path = Path(env["ITSM_DB_PASSWORD_FILE"])
        assert path.parent == tmp_path and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert make_url(env["ITSM_DATABASE_URL"]).username == f"{name}_app"
        assert make_url(env["ITSM_DATABASE_URL"]).password is None, "the password is read from the file"
        assert not [k for k in env if k.startswith(DB_VARIABLE)], "a service is given no migration password"
        job = runner.migrate_env(name)
        assert {k for k in job if k.startswith(DB_VARIABLE)} == {f"{_own(name)}_FILE"}
        assert job[f"{_own(name)}_FILE"] == str(path), "the job sets the password the service logs in with"
        assert "ITSM_DB_PASSWORD_FILE" not in job
        files[name] = path
    passwords = {name: path.read_text() for name, path in files.items()}
    assert len(set(passwords.values())) == len(passwords), "one password per service"
    assert all(len(p.strip()) >= 40 for p in passwords.values())
    # Kept: the next start of the same run dir gives the same ones.
    again = stack.Stack(stack.StackSettings.isolated(tmp_path, services=()))
    assert {n: Path(again.service_env(n)["ITSM_DB_PASSWORD_FILE"]).read_text() for n in files} == passwords


def test_operator_passwords_reach_their_own_service_only(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # All of them exported in the shell that runs `make run`: each process still gets one.
    for name in services.names():
        clean_env.setenv(_own(name), f"operator-secret-of-{name}")
    given = tmp_path / "incident-password"
    given.write_text("from-a-file\n")
    clean_env.delenv(_own("incident"))
    clean_env.setenv(f"{_own('incident')}_FILE", str(given))
    runner = stack.Stack(stack.StackSettings.isolated(tmp_path, services=()))
    for name in services.names():
        env, job = runner.service_env(name), runner.migrate_env(name)
        assert not [k for k in env if k.startswith(DB_VARIABLE)], name
        held = {k: v for k, v in job.items() if k.startswith(DB_VARIABLE)}
        if name == "incident":
            assert held == {f"{_own(name)}_FILE": str(given)}
            assert env["ITSM_DB_PASSWORD_FILE"] == str(given)
        else:
            assert held == {_own(name): f"operator-secret-of-{name}"}
            assert make_url(env["ITSM_DATABASE_URL"]).password == f"operator-secret-of-{name}"
            assert "ITSM_DB_PASSWORD_FILE" not in env
        others = [f"operator-secret-of-{n}" for n in services.names() if n != name]
        assert not [v for v in {**env, **job}.values() if any(o in v for o in others)], name
    assert not list(tmp_path.glob("db-password-*")), "nothing generated where the operator gave them"


def test_the_one_shared_password_is_refused(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv(DB_VARIABLE, "one-for-all")
    runner = stack.Stack(stack.StackSettings.isolated(tmp_path, services=()))
    with pytest.raises(processes.StackError, match=f"{DB_VARIABLE}_<SERVICE>"):
        runner.service_env("incident")
    with pytest.raises(processes.StackError, match="no longer read"):
        runner.migrate_env("incident")


# ------------------------------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_gives_each_service_and_its_migration_job_only_its_own_secret(compose: dict[str, Any]) -> None:
    declared = compose["secrets"]
    sources = set()
    for name in services.names():
        secret = configs.db_secret(name)
        assert declared[secret] == {"environment": _own(name)}, "from the host, one variable per service"
        sources.add(declared[secret]["environment"])
        job, app = compose["services"][f"migrate-{name}"], compose["services"][name]
        assert job["secrets"] == [secret]
        assert job["environment"][f"{_own(name)}_FILE"] == f"/run/secrets/{secret}"
        # Its own role's password, no other's (the other secrets a service has are the business of their tests).
        assert {x for x in app["secrets"] if x.endswith("_db_password")} == {secret}
        assert app["environment"]["ITSM_DB_PASSWORD_FILE"] == f"/run/secrets/{secret}"
        url = make_url(app["environment"]["ITSM_DATABASE_URL"].replace("${ITSM_DATABASE_NAME:-itsm}", "itsm"))
        assert url.username == f"{name}_app" and url.password is None
    assert len(sources) == len(services.names())
    for entry, body in compose["services"].items():
        env = body.get("environment", {})
        assert DB_VARIABLE not in env and not [k for k in env if k.startswith(f"{DB_VARIABLE}_") and "_FILE" not in k]
        mounted = {s for s in body.get("secrets", []) if s.endswith("_db_password")}
        assert len(mounted) <= 1, entry
    assert "${ITSM_DB_APP_PASSWORD" not in (REPO_ROOT / "docker-compose.yml").read_text()
    # The PostgreSQL container checks the password of every connection from another container.
    assert compose["services"]["postgres"]["environment"]["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"


# ------------------------------------------------------------------------------------------ the attack


def _initdb() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name), reverse=True
    )
    return candidates[0] if candidates else None


@contextlib.contextmanager
def scram_cluster() -> Iterator[str]:
    """A PostgreSQL cluster of its own in a temporary directory, on a free port, where every connection (local
    ones too) proves its password with SCRAM-SHA-256; removed afterwards. Yields its superuser URL."""
    initdb = _initdb()
    if initdb is None:
        pytest.skip("no initdb on this machine")
    as_user: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root with no postgres user")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="itsm-scram-"))
    password = secrets.token_urlsafe(18)
    (root / "pwfile").write_text(password + "\n")
    if owner is not None:
        for path in (root, root / "pwfile"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = processes.free_port()
    data, bindir = root / "data", initdb.parent
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"

    def run(*argv: str | Path) -> None:
        subprocess.run([*as_user, *map(str, argv)], check=True, capture_output=True, timeout=120)

    try:
        run(initdb, "-D", data, "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={root / 'pwfile'}", "-N")
        run(bindir / "pg_ctl", "-D", data, "-l", root / "log", "-o", options, "-w", "-t", "60", "start")
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}/itsm_roles"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


async def _connect(url: str, user: str, password: str | None) -> asyncpg.Connection:
    target = make_url(url)
    return await asyncpg.connect(
        host=target.host, port=target.port, database=target.database, user=user, password=password, timeout=10
    )


def test_one_services_credential_does_not_open_another_services_role(tmp_path: Path) -> None:
    """The runner migrates and starts auth and incident on a cluster that checks passwords: each logs in with the
    password generated for it (its /readyz answers 200), the two roles hold different SCRAM verifiers, and code
    running in the incident service, holding incident's credential, cannot log in as auth_app (whose schema
    holds the signing keys), nor read auth's tables as incident_app."""
    wanted = ("auth", "incident")
    if not set(wanted) <= set(stack.discover_services()):
        pytest.skip("the auth and incident services are needed")
    with scram_cluster() as admin_url:
        settings = stack.StackSettings.isolated(
            tmp_path, admin_database_url=admin_url, services=wanted, start_gateway=False, ready_timeout=60
        )
        if processes.probe_rabbitmq(settings.amqp_url):
            pytest.skip("no local RabbitMQ")
        runner = stack.Stack(settings)
        try:
            runner.start()  # migrations with each service's own password, then both services: both ready
            env = {name: runner.processes[name].env for name in wanted}
            password = {name: Path(env[name]["ITSM_DB_PASSWORD_FILE"]).read_text().strip() for name in wanted}
            assert password["auth"] != password["incident"]
            # What the incident process holds: its own role's credential, nothing of auth's.
            assert not [v for v in env["incident"].values() if password["auth"] in v or "db-password-auth" in v]
            asyncio.run(_attack(settings.database_url, password))
        finally:
            runner.stop()
            runner.drop_broker_users()
            queues = tuple(settings.queue_prefix + q for name in wanted for q in services.get(name).queues)
            asyncio.run(remove_topology(settings.amqp_url, settings.exchange, settings.dead_letter_exchange, queues))


async def _attack(url: str, password: dict[str, str]) -> None:
    admin = await asyncpg.connect(url)
    try:
        rows = await admin.fetch("SELECT rolname, rolpassword FROM pg_authid WHERE rolname LIKE '%\\_app'")
        verifiers = {row["rolname"]: row["rolpassword"] for row in rows}
    finally:
        await admin.close()
    assert all(v.startswith("SCRAM-SHA-256$4096:") for v in verifiers.values()), verifiers
    assert verifiers["auth_app"] != verifiers["incident_app"]

    # Each logs in as itself ...
    own = await _connect(url, "incident_app", password["incident"])
    try:
        # ... and has no rights on another service's schema: the signing keys stay out of reach.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await own.fetch("SELECT * FROM auth.signing_key")
    finally:
        await own.close()
    # The attack: incident's credential (or none) as auth's role.
    for attempt in (password["incident"], None, ""):
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await (await _connect(url, "auth_app", attempt)).close()
    await (await _connect(url, "auth_app", password["auth"])).close()
