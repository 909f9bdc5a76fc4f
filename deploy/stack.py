"""The test harness: one local stack of the services under uvicorn and Traefik in front, as real processes.

Tests and benchmarks (deploy/ on sys.path, `import stack`) start a `Stack` of their own: free ports, their
own database and exchange (`StackSettings.isolated`), services killed (kill -9), restarted, or armed with a
fault point (`ITSM_FAULT_POINT`). `make run` (deploy/run.py) starts the same `Stack` with the operator's
settings. Names, ports and routes come from the table of services (deploy/services.toml). With
`StackSettings.replicas`, each service runs as that many processes on ports of their own, and the gateway balances
each service's route over them; a method about one process takes `replica` (0, the first, by default).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import service_table as services
from gateway import ACCESS_LOG, GATEWAY, served_by, start_gateway
from processes import (
    REPO_ROOT,
    ManagedProcess,
    ProcessFailed,
    StackError,
    check_dependencies,
    http_status,
    port_in_use,
    stop_all,
    tail,
    wait_until,
    with_database,
)
from stack_env import StackEnvironments
from stack_settings import (
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    DEFAULT_DEAD_LETTER_EXCHANGE,
    DEFAULT_EXCHANGE,
    REPLICA_PORT_STEP,
    StackSettings,
    discover_services,
    instance,
)

# What tests and benchmarks have always found here (`stack.StackSettings`, `stack.DEFAULT_EXCHANGE`, ...).
__all__ = [
    "DEFAULT_AMQP_URL",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_DEAD_LETTER_EXCHANGE",
    "DEFAULT_EXCHANGE",
    "Stack",
    "StackSettings",
    "discover_services",
    "instance",
]


class Stack(StackEnvironments):
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
                self.migrate_all()
            ordered = [
                (name, replica)
                for name in sorted(self.services, key=services.names().index)
                for replica in range(s.replicas)
            ]
            if (services.ISSUER, 0) in ordered:  # the others fetch its JWKS when they start
                self.start_service(services.ISSUER)
                ordered.remove((services.ISSUER, 0))
            for name, replica in ordered:
                self.start_service(name, wait=False, replica=replica)
            for name, replica in ordered:
                self.wait_ready(name, replica=replica)
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

    def instances(self) -> list[tuple[str, int]]:
        """(service, replica) of every service process of the stack, in start order."""
        ordered = sorted(self.services, key=services.names().index)
        return [(name, replica) for name in ordered for replica in range(self.settings.replicas)]

    def _check_ports_free(self) -> None:
        s = self.settings
        wanted = [(instance(name, r), "127.0.0.1", s.port(name, r)) for name, r in self.instances()]
        if s.start_gateway:
            wanted.append((GATEWAY, s.gateway_host, s.gateway_port))
        invalid = [f"{name} port {port}" for name, _, port in wanted if not 1 <= port <= 65535]
        if invalid:
            raise StackError(
                f"no such port: {', '.join(invalid)}. Fewer replicas, or lower ports (ITSM_<SERVICE>_PORT)."
            )
        owners: dict[int, list[str]] = {}
        for name, _, port in wanted:
            owners.setdefault(port, []).append(name)
        shared = [f"{' and '.join(names)} on {port}" for port, names in owners.items() if len(names) > 1]
        if shared:
            raise StackError(
                f"one port for two processes: {'; '.join(shared)}. The n-th replica of a service listens "
                f"{REPLICA_PORT_STEP} * (n - 1) above its port: choose ports (ITSM_<SERVICE>_PORT, "
                "ITSM_GATEWAY_PORT) that stay apart."
            )
        busy = [f"{name} port {port}" for name, host, port in wanted if port_in_use(host, port)]
        if busy:
            raise StackError(
                f"already in use: {', '.join(busy)}. Is another stack (make run) up? "
                "Stop it, or choose other ports (ITSM_GATEWAY_PORT, ITSM_<SERVICE>_PORT)."
            )

    # -- pieces -------------------------------------------------------------------------------------

    def migrate_all(self) -> None:
        """Migrate every service of the stack: the first alone (it creates the database), then the others at once,
        each in a process of its own (each has its own schema, roles and alembic version table; provisioning takes
        an advisory lock for what they share), which saves most of the start-up on a machine with a core or two
        to spare. The first failure is raised once all have ended."""
        ordered = sorted(self.services, key=services.names().index)
        if not ordered:
            return
        first, *others = ordered
        self.migrate(first)
        with ThreadPoolExecutor(max_workers=max(1, len(others))) as pool:
            done = [pool.submit(self.migrate, name) for name in others]
        failures = [error for future in done if (error := future.exception()) is not None]
        if failures:
            raise failures[0]

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

    def start_service(
        self, name: str, env: Mapping[str, str] | None = None, *, wait: bool = True, replica: int = 0
    ) -> None:
        """Start one replica of a service (with `env` over its usual environment) and wait for its /readyz."""
        if name not in services.names():
            raise StackError(f"unknown service {name}")
        s = self.settings
        if not 0 <= replica < s.replicas:
            raise StackError(f"{name} has replicas 0 to {s.replicas - 1} in this stack, not {replica}")
        key = instance(name, replica)
        current = self.processes.get(key)
        if current is not None and current.running():
            raise StackError(f"{key} is already running (pid {current.pid})")
        process = ManagedProcess(
            key,
            [
                s.python,
                "-m",
                "uvicorn",
                f"{name}.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(s.port(name, replica)),
                "--no-server-header",
                # The gateway keeps the access log (JSON); a second one per service costs each request a log line.
                "--no-access-log",
                "--timeout-graceful-shutdown",
                "5",
            ],
            self.service_env(name, env),
            s.run_dir / f"{key}.log",
            die_with_parent=s.die_with_parent,
        )
        self.processes[key] = process
        process.start()
        if wait:
            self.wait_ready(name, replica=replica)

    def process(self, name: str, replica: int = 0) -> ManagedProcess:
        """The process of one replica of a service (replica 0: the first, `processes[name]`)."""
        return self.processes[instance(name, replica)]

    def wait_ready(self, name: str, timeout: float | None = None, *, replica: int = 0) -> None:
        url = f"{self.settings.service_url(name, replica)}/readyz"
        wait_until(
            lambda: http_status(url) == 200,
            timeout=self.settings.ready_timeout if timeout is None else timeout,
            process=self.process(name, replica),
            what=f"{instance(name, replica)} to answer 200 on {url}",
        )

    def kill_service(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0, *, replica: int = 0) -> int:
        """Signal one replica of a service (kill -9 by default) and return its exit code."""
        return self.process(name, replica).kill(sig, timeout)

    def wait_exit(self, name: str, timeout: float, *, replica: int = 0) -> int:
        """Wait for a replica to die by itself (a fault point) and return its exit code."""
        try:
            return self.process(name, replica).wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise ProcessFailed(f"{instance(name, replica)} still running after {timeout:.0f}s") from exc

    def restart_service(
        self,
        name: str,
        env: Mapping[str, str] | None = None,
        *,
        sig: int = signal.SIGKILL,
        wait: bool = True,
        replica: int = 0,
    ) -> None:
        """Kill one replica of a service if it runs and start it again with `env` (the previous start's `env` is
        dropped). With `wait`, returns once /readyz is 200 and the gateway routes to it again.

        With a fault point in `env`, pass wait=False and use `wait_exit`: an outbox row left by the
        killed process can make the new one reach the fault point before it is ready."""
        process = self.processes.get(instance(name, replica))
        if process is not None and process.running():
            process.kill(sig)
        self.start_service(name, env, wait=wait, replica=replica)
        if wait and GATEWAY in self.processes:
            self.wait_routed(name, replica=replica)

    def wait_routed(self, name: str, timeout: float | None = None, *, replica: int = 0) -> None:
        """Wait until the gateway forwards to this replica of `name` (its health check may have marked it down):
        until the gateway's access log shows a request it sent to this process (with several replicas, the others
        answer meanwhile)."""
        s = self.settings
        url = f"{s.gateway_url}{services.get(name).api_prefix}/openapi.json"
        log = s.run_dir / ACCESS_LOG
        since = log.stat().st_size if log.exists() else 0
        address = f"127.0.0.1:{s.port(name, replica)}"

        def routed() -> bool:
            http_status(url)
            return served_by(log, address, since)

        wait_until(
            routed,
            timeout=s.ready_timeout if timeout is None else timeout,
            process=self.process(name, replica),
            what=f"the gateway to route {url} to {instance(name, replica)}",
        )

    def start_gateway(self) -> None:
        s = self.settings
        upstreams = {
            name: [s.service_url(name, r) for r in range(s.replicas) if instance(name, r) in self.processes] or None
            for name in services.names()
        }
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

    def exited(self) -> list[ManagedProcess]:
        return [p for p in self.processes.values() if p.popen is not None and not p.running()]

    def log_path(self, name: str, replica: int = 0) -> Path:
        return self.process(name, replica).log_path

    def docs_urls(self) -> dict[str, str]:
        return {name: f"{self.settings.gateway_url}{services.get(name).docs_path}" for name in self.services}
