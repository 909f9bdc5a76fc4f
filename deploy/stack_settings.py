"""What one local stack is: where its services listen (each replica on its own port), which database, exchange and
broker users it uses, and its limits. `StackSettings.from_env` is `make run`'s (the operator's ITSM_* variables),
`StackSettings.isolated` a test's or a benchmark's (free ports, a database and exchange of its own). The harness
(deploy/stack.py) starts what they describe.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import service_table as services
from gateway import DEFAULT_API_RATE_LIMIT, DEFAULT_GATEWAY_PORT, DEFAULT_LOGIN_RATE_LIMIT
from processes import REPO_ROOT, StackError, free_port, with_database

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/itsm"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_EXCHANGE = "itsm.events"
DEFAULT_DEAD_LETTER_EXCHANGE = "itsm.dlx"
# Under `make run`, the n-th replica of a service (n = 2, 3, ...) listens (n - 1) * REPLICA_PORT_STEP above the
# service's port: incident on 8102, 8202, 8302 ...
REPLICA_PORT_STEP = 100
REPLICAS_VARIABLE = "ITSM_REPLICAS"


def instance(service: str, replica: int = 0) -> str:
    """The name of one process of a service: the service's own for its first replica (replica 0), `<service>-<n>`
    for the n-th (`incident-2` is replica 1). Its log is `<name>.log` in the run dir."""
    return service if replica == 0 else f"{service}-{replica + 1}"


def parse_replicas(value: str | None) -> int:
    """ITSM_REPLICAS: processes per service, 1 when unset."""
    if value is None or not value.strip():
        return 1
    try:
        replicas = int(value)
    except ValueError:
        replicas = 0
    if replicas < 1:
        raise StackError(
            f"{REPLICAS_VARIABLE} must be a whole number, 1 or more (processes per service), not {value!r}"
        )
    return replicas


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
    # The port of each service's first replica (the table's by default).
    service_ports: Mapping[str, int] = field(default_factory=default_ports)
    # Processes per service, each on its own port, all behind the gateway's route of the service.
    replicas: int = 1
    # The ports of a service's replicas, first to last, when not its port and REPLICA_PORT_STEP more for each
    # further one (`isolated` gives every replica a free port).
    replica_ports: Mapping[str, Sequence[int]] = field(default_factory=dict)
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

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise StackError(f"replicas must be 1 or more, not {self.replicas}")

    @property
    def database_url(self) -> str:
        if self.database_name:
            return with_database(self.admin_database_url, self.database_name)
        return self.admin_database_url

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"

    def port(self, service: str, replica: int = 0) -> int:
        """Where one replica of `service` listens (replica 0: the first)."""
        given = self.replica_ports.get(service)
        if given is not None and replica < len(given):
            return given[replica]
        return (self.service_ports.get(service) or services.get(service).port) + replica * REPLICA_PORT_STEP

    def service_url(self, service: str, replica: int = 0) -> str:
        return f"http://127.0.0.1:{self.port(service, replica)}"

    def service_urls(self, service: str) -> list[str]:
        """The base URL of each replica of `service`, first to last."""
        return [self.service_url(service, replica) for replica in range(self.replicas)]

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
            "replicas": parse_replicas(environ.get(REPLICAS_VARIABLE)),
        }
        if environ.get("ITSM_RUN_DIR"):
            values["run_dir"] = Path(environ["ITSM_RUN_DIR"])
        values.update(overrides)
        return cls(**values)

    @classmethod
    def isolated(cls, run_dir: Path, **overrides: Any) -> StackSettings:
        """A stack that cannot collide with `make run` or another test run: free ports, its own
        database and exchange, generous rate limits (a test that checks limits sets its own). With `replicas`,
        every replica of every service gets a free port of its own."""
        token = secrets.token_hex(4)
        taken: set[int] = set()

        def port() -> int:
            # A free port the stack has not given out yet: the kernel may offer a port again once it is released.
            while (found := free_port()) in taken:
                pass
            taken.add(found)
            return found

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
            "gateway_port": port(),
            "service_ports": {name: port() for name in services.names()},
            "api_rate_limit": 1000,
            "login_rate_limit": 6000,
            "bootstrap_admin_password": f"e2e-admin-{secrets.token_urlsafe(12)}",
            "run_dir": run_dir,
        }
        values.update(overrides)
        replicas = int(values.get("replicas", 1))
        if replicas > 1 and "replica_ports" not in overrides:
            first: Mapping[str, int] = values["service_ports"]
            values["replica_ports"] = {
                name: (first[name], *(port() for _ in range(replicas - 1))) for name in services.names()
            }
        return cls(**values)
