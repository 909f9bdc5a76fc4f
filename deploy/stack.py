"""The test harness: one local stack of the services under uvicorn and Traefik in front, as real processes.

Tests and benchmarks (deploy/ on sys.path, `import stack`) start a `Stack` of their own: free ports, their
own database and exchange (`StackSettings.isolated`), services killed (kill -9), restarted, or armed with a
fault point (`ITSM_FAULT_POINT`). `make run` (deploy/run.py) starts the same `Stack` with the operator's
settings. Names, ports and routes come from the table of services (deploy/services.toml).
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import broker_accounts
import service_table as services
from gateway import DEFAULT_API_RATE_LIMIT, DEFAULT_GATEWAY_PORT, DEFAULT_LOGIN_RATE_LIMIT, GATEWAY, start_gateway
from itsm_shared.broker_users import Topology
from processes import (
    REPO_ROOT,
    ManagedProcess,
    ProcessFailed,
    StackError,
    check_dependencies,
    free_port,
    http_status,
    port_in_use,
    stop_all,
    tail,
    wait_until,
    with_database,
)

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/itsm"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_EXCHANGE = "itsm.events"
DEFAULT_DEAD_LETTER_EXCHANGE = "itsm.dlx"
# The auth service's key-encryption key (its signing keys are stored encrypted under it): given to auth only.
KEK_VARIABLES = ("ITSM_AUTH_KEK", "ITSM_AUTH_KEK_FILE", "ITSM_AUTH_KEK_PREVIOUS")
# The webhook service's key of the subscriptions' signing secrets (stored encrypted under it): given to webhook only.
WEBHOOK = "webhook"
WEBHOOK_KEY_VARIABLES = ("ITSM_WEBHOOK_SECRET_KEY", "ITSM_WEBHOOK_SECRET_KEY_FILE")
# The audit service's anchor key (it signs its hash chain with it, README, Audit): given to audit only.
ANCHOR_VARIABLES = ("ITSM_AUDIT_ANCHOR_KEY", "ITSM_AUDIT_ANCHOR_KEY_FILE")
# Database credentials: ITSM_DB_APP_PASSWORD_<SERVICE>[_FILE] for that service's migration job, the password file
# of its own role for the service (itsm_shared.settings); the unsuffixed ITSM_DB_APP_PASSWORD is refused.
LEGACY_DB_APP_PASSWORD = "ITSM_DB_APP_PASSWORD"  # noqa: S105 (names of variables, not passwords)
DB_PASSWORD_FILE = "ITSM_DB_PASSWORD_FILE"  # noqa: S105


def _secret_file(path: Path, make: Callable[[], str]) -> Path:
    """`path`, created once with `make()` (mode 0600) and kept."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path
        with os.fdopen(descriptor, "w") as file:
            file.write(make() + "\n")
    return path


def auth_kek_file(run_dir: Path) -> Path:
    """The KEK of the stack in `run_dir`, generated once (mode 0600) and kept there: the signing keys in that
    stack's database can only be read with it. Unless the operator gives ITSM_AUTH_KEK or ITSM_AUTH_KEK_FILE."""
    return _secret_file(run_dir / "auth-kek", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())


def audit_anchor_key_file(run_dir: Path) -> Path:
    """The anchor key of the stack in `run_dir` (the audit service signs each batch of its chain with it), generated
    once (mode 0600) and kept there, given to the audit service only. Unless the operator gives
    ITSM_AUDIT_ANCHOR_KEY or ITSM_AUDIT_ANCHOR_KEY_FILE."""
    return _secret_file(
        run_dir / "audit-anchor-key", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    )


def db_password_file(run_dir: Path, service: str) -> Path:
    """The password of `<service>_app` in the stack of `run_dir`: one per service, generated once (mode 0600) and
    kept there, given to that service's migration job (which sets it) and to that service only. Unless the
    operator gives ITSM_DB_APP_PASSWORD_<SERVICE> or ITSM_DB_APP_PASSWORD_<SERVICE>_FILE."""
    return _secret_file(run_dir / f"db-password-{service}", lambda: secrets.token_urlsafe(32))


def is_db_credential(variable: str) -> bool:
    """A variable carrying some service role's database password (each is given to one process at most)."""
    return variable.startswith(LEGACY_DB_APP_PASSWORD) or variable == DB_PASSWORD_FILE


def webhook_secret_key_file(run_dir: Path) -> Path:
    """The key of the webhook signing secrets of the stack in `run_dir`, generated once (mode 0600) and kept there.
    Unless the operator gives ITSM_WEBHOOK_SECRET_KEY or ITSM_WEBHOOK_SECRET_KEY_FILE."""
    return _secret_file(
        run_dir / "webhook-secret-key", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    )


def default_ports() -> dict[str, int]:
    return {s.name: s.port for s in services.table()}


def discover_services(root: Path = REPO_ROOT) -> list[str]:
    """The services of the table that exist (services/<name>/src/<name>/main.py), in start order."""
    return [name for name in services.names() if (root / "services" / name / "src" / name / "main.py").is_file()]


@dataclass(frozen=True)
class StackSettings:
    # Superuser URL; its database part is replaced by `database_name` when that is set.
    admin_database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str = DEFAULT_AMQP_URL
    database_name: str | None = None
    exchange: str = DEFAULT_EXCHANGE
    dead_letter_exchange: str = DEFAULT_DEAD_LETTER_EXCHANGE
    queue_prefix: str = ""
    # Each service connects to RabbitMQ as `<broker_user_prefix><service>` (broker_accounts; README, Security).
    broker_user_prefix: str = ""
    gateway_host: str = "127.0.0.1"
    gateway_port: int = DEFAULT_GATEWAY_PORT
    service_ports: Mapping[str, int] = field(default_factory=default_ports)
    # None: every service that exists.
    services: tuple[str, ...] | None = None
    api_rate_limit: int = DEFAULT_API_RATE_LIMIT
    login_rate_limit: int = DEFAULT_LOGIN_RATE_LIMIT
    bootstrap_admin_password: str | None = None
    # Environment for every service / for one service (over the computed values).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    gateway_env: Mapping[str, str] = field(default_factory=dict)
    run_dir: Path = REPO_ROOT / ".run"
    python: str = sys.executable
    migrate: bool = True
    start_gateway: bool = True
    ready_timeout: float = 90.0
    migrate_timeout: float = 300.0
    stop_grace: float = 10.0
    die_with_parent: bool = False

    @property
    def database_url(self) -> str:
        if self.database_name:
            return with_database(self.admin_database_url, self.database_name)
        return self.admin_database_url

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"

    def port(self, service: str) -> int:
        return self.service_ports.get(service) or services.get(service).port

    def service_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.port(service)}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> StackSettings:
        """What `make run` uses: the operator settings of CONTRACT.md §1, defaults otherwise."""
        ports = default_ports()
        for service in services.table():
            value = environ.get(service.port_env)
            if value:
                ports[service.name] = int(value)
        values: dict[str, Any] = {
            "admin_database_url": environ.get("ITSM_DATABASE_URL") or DEFAULT_DATABASE_URL,
            "amqp_url": environ.get("ITSM_AMQP_URL") or DEFAULT_AMQP_URL,
            "exchange": environ.get("ITSM_EXCHANGE") or DEFAULT_EXCHANGE,
            "dead_letter_exchange": environ.get("ITSM_DEAD_LETTER_EXCHANGE") or DEFAULT_DEAD_LETTER_EXCHANGE,
            "broker_user_prefix": environ.get("ITSM_BROKER_USER_PREFIX") or "",
            "gateway_port": int(environ.get("ITSM_GATEWAY_PORT") or DEFAULT_GATEWAY_PORT),
            "service_ports": ports,
            "api_rate_limit": int(environ.get("ITSM_API_RATE_LIMIT") or DEFAULT_API_RATE_LIMIT),
            "login_rate_limit": int(environ.get("ITSM_LOGIN_RATE_LIMIT") or DEFAULT_LOGIN_RATE_LIMIT),
            "bootstrap_admin_password": environ.get("ITSM_BOOTSTRAP_ADMIN_PASSWORD") or None,
        }
        if environ.get("ITSM_RUN_DIR"):
            values["run_dir"] = Path(environ["ITSM_RUN_DIR"])
        values.update(overrides)
        return cls(**values)

    @classmethod
    def isolated(cls, run_dir: Path, **overrides: Any) -> StackSettings:
        """A stack that cannot collide with `make run` or another test run: free ports, its own
        database and exchange, generous rate limits (a test that checks limits sets its own)."""
        token = secrets.token_hex(4)
        values: dict[str, Any] = {
            "admin_database_url": os.environ.get("ITSM_TEST_DATABASE_URL")
            or os.environ.get("ITSM_DATABASE_URL")
            or DEFAULT_DATABASE_URL,
            "amqp_url": os.environ.get("ITSM_TEST_AMQP_URL") or os.environ.get("ITSM_AMQP_URL") or DEFAULT_AMQP_URL,
            "database_name": f"itsm_e2e_{token}",
            "exchange": f"itsm_e2e_{token}.events",
            "dead_letter_exchange": f"itsm_e2e_{token}.dlx",
            "queue_prefix": f"itsm_e2e_{token}.",
            "broker_user_prefix": f"itsm_e2e_{token}.",
            "gateway_port": free_port(),
            "service_ports": {name: free_port() for name in services.names()},
            "api_rate_limit": 1000,
            "login_rate_limit": 6000,
            "bootstrap_admin_password": f"e2e-admin-{secrets.token_urlsafe(12)}",
            "run_dir": run_dir,
        }
        values.update(overrides)
        return cls(**values)


class Stack:
    """Migrates, starts, watches and stops the services and the gateway of one local stack."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.processes: dict[str, ManagedProcess] = {}
        self.services: list[str] = list(settings.services) if settings.services is not None else discover_services()
        unknown = [s for s in self.services if s not in services.names()]
        if unknown:
            raise StackError(f"unknown services {unknown}; known: {', '.join(services.names())}")

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        s = self.settings
        check_dependencies(s.database_url, s.amqp_url)
        self._check_ports_free()
        s.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.create_broker_users()
            if s.migrate:
                for name in self.services:
                    self.migrate(name)
            ordered = sorted(self.services, key=services.names().index)
            if services.ISSUER in ordered:  # the others fetch its JWKS when they start
                self.start_service(services.ISSUER)
                ordered.remove(services.ISSUER)
            for name in ordered:
                self.start_service(name, wait=False)
            for name in ordered:
                self.wait_ready(name)
            if s.start_gateway:
                self.start_gateway()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # The gateway first, so no new request reaches a service that is shutting down.
        gateway = [p for p in self.processes.values() if p.name == GATEWAY]
        stop_all(gateway, self.settings.stop_grace)
        stop_all([p for p in self.processes.values() if p.name != GATEWAY], self.settings.stop_grace)

    def _check_ports_free(self) -> None:
        s = self.settings
        wanted = [(name, "127.0.0.1", s.port(name)) for name in self.services]
        if s.start_gateway:
            wanted.append((GATEWAY, s.gateway_host, s.gateway_port))
        busy = [f"{name} port {port}" for name, host, port in wanted if port_in_use(host, port)]
        if busy:
            raise StackError(
                f"already in use: {', '.join(busy)}. Is another stack (make run) up? "
                "Stop it, or choose other ports (ITSM_GATEWAY_PORT, ITSM_<SERVICE>_PORT)."
            )

    # -- pieces -------------------------------------------------------------------------------------

    def migrate(self, name: str) -> None:
        """`python -m itsm_shared.migrate <name>` with the admin URL: database, schema, roles, alembic."""
        s = self.settings
        log_path = s.run_dir / f"migrate-{name}.log"
        env = self.migrate_env(name)
        with log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} migrate {name}\n".encode())
            log.flush()
            try:
                result = subprocess.run(  # noqa: S603 - fixed argv
                    [s.python, "-m", "itsm_shared.migrate", name],
                    cwd=REPO_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=s.migrate_timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise ProcessFailed(
                    f"migrating {name} took longer than {s.migrate_timeout:.0f}s.\n"
                    f"Last lines of {log_path}:\n{tail(log_path)}"
                ) from exc
        if result.returncode != 0:
            raise ProcessFailed(
                f"migrating {name} failed with code {result.returncode}.\nLast lines of {log_path}:\n{tail(log_path)}"
            )

    def db_password(self, name: str, environ: Mapping[str, str]) -> tuple[str | None, Path | None]:
        """The password of `<name>_app`: (value, None) when the operator gives ITSM_DB_APP_PASSWORD_<NAME>, else
        (None, file): the operator's ITSM_DB_APP_PASSWORD_<NAME>_FILE or the one generated in the run dir."""
        if environ.get(LEGACY_DB_APP_PASSWORD):
            raise StackError(
                f"{LEGACY_DB_APP_PASSWORD} (one password for every service's database role) is no longer read. "
                f"Unset it: each service gets its own, generated in {self.settings.run_dir}, or set "
                f"{LEGACY_DB_APP_PASSWORD}_<SERVICE> (or ..._FILE) for each."
            )
        variable = f"{LEGACY_DB_APP_PASSWORD}_{name.upper()}"
        if environ.get(variable):
            return environ[variable], None
        if environ.get(f"{variable}_FILE"):
            return None, Path(environ[f"{variable}_FILE"])
        return None, db_password_file(self.settings.run_dir, name)

    def migrate_env(self, name: str) -> dict[str, str]:
        """The environment of one migration job: the admin URL and the password of this service's role only."""
        s = self.settings
        env = self._base_env()
        env.update(s.extra_env)
        operator = {**env, **s.service_env.get(name, {})}
        env["ITSM_DATABASE_URL"] = s.database_url
        for variable in [
            v for v in env if v in (*KEK_VARIABLES, *ANCHOR_VARIABLES, *WEBHOOK_KEY_VARIABLES) or is_db_credential(v)
        ]:
            env.pop(variable)  # migrations never see the KEK or the anchor key, nor another service's password
        value, path = self.db_password(name, operator)
        variable = f"{LEGACY_DB_APP_PASSWORD}_{name.upper()}"
        if value is not None:
            env[variable] = value
        else:
            env[f"{variable}_FILE"] = str(path)
        return env

    def service_env(self, name: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of one service process (README, Configuration)."""
        from itsm_shared.provision import app_url  # lazy: the shared lib is built alongside this

        s = self.settings
        result = self._base_env()
        overrides = {**s.extra_env, **s.service_env.get(name, {}), **(env or {})}
        password, password_file = self.db_password(name, {**result, **overrides})
        for variable in [v for v in result if is_db_credential(v)]:
            result.pop(variable)  # a service logs in with its own role's password, and holds no other
        overrides = {k: v for k, v in overrides.items() if not k.startswith(LEGACY_DB_APP_PASSWORD)}
        if password_file is not None:
            result[DB_PASSWORD_FILE] = str(password_file)
        amqp = self.broker_env(name, {**result, **overrides})
        for variable in [v for v in result if broker_accounts.is_broker_credential(v)]:
            result.pop(variable)  # a service logs in to the broker as its own user only
        overrides = {k: v for k, v in overrides.items() if not broker_accounts.is_broker_credential(k)}
        result.update(
            {
                "ITSM_DATABASE_URL": app_url(s.database_url, name, password),
                **amqp,
                "ITSM_EXCHANGE": s.exchange,
                "ITSM_DEAD_LETTER_EXCHANGE": s.dead_letter_exchange,
                "ITSM_QUEUE_PREFIX": s.queue_prefix,
                "ITSM_JWKS_URL": f"{s.service_url(services.ISSUER)}{services.JWKS_PATH}",
            }
        )
        result.setdefault("ITSM_LOG_LEVEL", "INFO")
        # The token issuer is the gateway's URL (RFC 8414 finds the metadata there; README, Auth), unless given.
        result.setdefault("ITSM_JWT_ISSUER", s.gateway_url)
        # A fault point must be asked for explicitly on each start, never inherited.
        result.pop("ITSM_FAULT_POINT", None)
        if name == services.ISSUER and s.bootstrap_admin_password:
            result["ITSM_BOOTSTRAP_ADMIN_PASSWORD"] = s.bootstrap_admin_password
        result.update(overrides)
        if name != services.ISSUER:
            for variable in KEK_VARIABLES:  # only the auth service is given the KEK, even from the shell
                result.pop(variable, None)
        elif not result.get("ITSM_AUTH_KEK") and not result.get("ITSM_AUTH_KEK_FILE"):
            result["ITSM_AUTH_KEK_FILE"] = str(auth_kek_file(s.run_dir))
        if name != services.AUDITOR:
            for variable in ANCHOR_VARIABLES:  # only the audit service is given the anchor key, even from the shell
                result.pop(variable, None)
        else:
            if not result.get("ITSM_AUDIT_ANCHOR_KEY") and not result.get("ITSM_AUDIT_ANCHOR_KEY_FILE"):
                result["ITSM_AUDIT_ANCHOR_KEY_FILE"] = str(audit_anchor_key_file(s.run_dir))
            result.setdefault("ITSM_AUDIT_REPLAY_QUEUES", ",".join(services.replay_queues()))
        if name != WEBHOOK:
            for variable in WEBHOOK_KEY_VARIABLES:  # only the webhook service is given its key, even from the shell
                result.pop(variable, None)
        elif not result.get("ITSM_WEBHOOK_SECRET_KEY") and not result.get("ITSM_WEBHOOK_SECRET_KEY_FILE"):
            result["ITSM_WEBHOOK_SECRET_KEY_FILE"] = str(webhook_secret_key_file(s.run_dir))
        return result

    def start_service(self, name: str, env: Mapping[str, str] | None = None, *, wait: bool = True) -> None:
        """Start one service (with `env` over its usual environment) and wait for its /readyz."""
        if name not in services.names():
            raise StackError(f"unknown service {name}")
        current = self.processes.get(name)
        if current is not None and current.running():
            raise StackError(f"{name} is already running (pid {current.pid})")
        s = self.settings
        process = ManagedProcess(
            name,
            [
                s.python,
                "-m",
                "uvicorn",
                f"{name}.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(s.port(name)),
                "--no-server-header",
                # The gateway keeps the access log (JSON); a second one per service costs each request a log line.
                "--no-access-log",
                "--timeout-graceful-shutdown",
                "5",
            ],
            self.service_env(name, env),
            s.run_dir / f"{name}.log",
            die_with_parent=s.die_with_parent,
        )
        self.processes[name] = process
        process.start()
        if wait:
            self.wait_ready(name)

    def wait_ready(self, name: str, timeout: float | None = None) -> None:
        url = f"{self.settings.service_url(name)}/readyz"
        wait_until(
            lambda: http_status(url) == 200,
            timeout=self.settings.ready_timeout if timeout is None else timeout,
            process=self.processes[name],
            what=f"{name} to answer 200 on {url}",
        )

    def kill_service(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        """Signal one service (kill -9 by default) and return its exit code."""
        return self.processes[name].kill(sig, timeout)

    def wait_exit(self, name: str, timeout: float) -> int:
        """Wait for a service to die by itself (a fault point) and return its exit code."""
        try:
            return self.processes[name].wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise ProcessFailed(f"{name} still running after {timeout:.0f}s") from exc

    def restart_service(
        self,
        name: str,
        env: Mapping[str, str] | None = None,
        *,
        sig: int = signal.SIGKILL,
        wait: bool = True,
    ) -> None:
        """Kill one service if it runs and start it again with `env` (the previous start's `env` is
        dropped). With `wait`, returns once /readyz is 200 and the gateway routes to it again.

        With a fault point in `env`, pass wait=False and use `wait_exit`: an outbox row left by the
        killed process can make the new one reach the fault point before it is ready."""
        process = self.processes.get(name)
        if process is not None and process.running():
            process.kill(sig)
        self.start_service(name, env, wait=wait)
        if wait and GATEWAY in self.processes:
            self.wait_routed(name)

    def wait_routed(self, name: str, timeout: float | None = None) -> None:
        """Wait until the gateway forwards to `name` (its health check may have marked it down)."""
        url = f"{self.settings.gateway_url}{services.get(name).api_prefix}/openapi.json"
        wait_until(
            lambda: (status := http_status(url)) is not None and status < 500,
            timeout=self.settings.ready_timeout if timeout is None else timeout,
            process=self.processes[name],
            what=f"the gateway to route {url}",
        )

    def start_gateway(self) -> None:
        s = self.settings
        upstreams = {name: s.service_url(name) if name in self.processes else None for name in services.names()}
        self.processes[GATEWAY] = start_gateway(
            s.run_dir,
            host=s.gateway_host,
            port=s.gateway_port,
            upstreams=upstreams,
            api_rate_limit=s.api_rate_limit,
            login_rate_limit=s.login_rate_limit,
            extra_env=s.gateway_env,
            timeout=s.ready_timeout,
            die_with_parent=s.die_with_parent,
        )

    # -- the broker users ---------------------------------------------------------------------------

    def broker_topology(self) -> Topology:
        s = self.settings
        return Topology(s.exchange, s.dead_letter_exchange, s.queue_prefix, s.broker_user_prefix)

    def broker_credential(self, name: str, environ: Mapping[str, str] | None = None) -> broker_accounts.Credential:
        s = self.settings
        operator = {**os.environ, **s.extra_env, **s.service_env.get(name, {}), **(environ or {})}
        return broker_accounts.credential(s.run_dir, name, operator)

    def broker_env(self, name: str, environ: Mapping[str, str]) -> dict[str, str]:
        """ITSM_AMQP_URL as the service's own broker user, its password (or its file), and the user prefix."""
        secret = self.broker_credential(name, environ)
        return broker_accounts.service_environment(self.settings.amqp_url, self.broker_topology(), name, secret)

    def broker_url(self, name: str) -> str:
        """The AMQP URL of `name`'s broker user, password included: what a test publishes as that service with."""
        user = self.broker_topology().user(name)
        return broker_accounts.url_as(self.settings.amqp_url, user, self.broker_credential(name).read())

    def create_broker_users(self) -> None:
        """One broker user per service of the stack, with its permissions (broker_accounts)."""
        s = self.settings
        secrets_of = {name: self.broker_credential(name) for name in self.services}
        try:
            broker_accounts.ensure_users(s.amqp_url, self.broker_topology(), secrets_of, s.run_dir)
        except broker_accounts.BrokerUsersUnavailable as exc:
            raise StackError(str(exc)) from exc

    def drop_broker_users(self) -> None:
        """Delete this stack's broker users (e2e cleanup). Only for a stack with its own `broker_user_prefix`."""
        if not self.settings.broker_user_prefix:
            raise StackError("refusing to delete the broker users of a stack without its own broker_user_prefix")
        broker_accounts.drop_users(self.broker_topology(), services.names())

    def drop_database(self) -> None:
        """Drop this stack's database (e2e cleanup). Only for a stack with its own `database_name`."""
        s = self.settings
        if not s.database_name:
            raise StackError("refusing to drop the database of a stack without its own database_name")
        import asyncio

        import asyncpg  # the shared lib's driver

        async def drop() -> None:
            dsn = with_database(s.admin_database_url, "postgres").replace("postgresql+asyncpg://", "postgresql://")
            connection = await asyncpg.connect(dsn)
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{s.database_name}" WITH (FORCE)')
            finally:
                await connection.close()

        asyncio.run(drop())

    # -- status -------------------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        for service in services.table():
            env.pop(service.upstream_env, None)
        return env

    def exited(self) -> list[ManagedProcess]:
        return [p for p in self.processes.values() if p.popen is not None and not p.running()]

    def log_path(self, name: str) -> Path:
        return self.processes[name].log_path

    def docs_urls(self) -> dict[str, str]:
        return {name: f"{self.settings.gateway_url}{services.get(name).docs_path}" for name in self.services}
