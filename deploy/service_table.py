"""Reads deploy/services.toml, the one table of services (name, port, gateway prefixes, queues).

Imported with deploy/ on sys.path (`import service_table as services`) by the runner, the test harness, the config
generator and the tests. Standard library only, so the Makefile can run it with any Python 3.11:
`python3 deploy/service_table.py names` prints the names, `... ports` one `name port` line each.
"""

from __future__ import annotations

import functools
import re
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).resolve().with_name("services.toml")

# The service that issues tokens: started first; the others fetch the public keys from its JWKS.
ISSUER = "auth"
JWKS_PATH = "/api/v1/auth/jwks.json"

_NAME = re.compile(r"[a-z][a-z0-9]*")
_PREFIX = re.compile(r"/api/v1/[a-z0-9-]+")
# A well-known URI (RFC 8615) a service answers at the root: auth's RFC 8414 metadata. Never the first prefix.
_WELL_KNOWN = re.compile(r"/\.well-known/[a-z0-9-]+")


class TableError(ValueError):
    """deploy/services.toml says something impossible; the message says which entry and why."""


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    prefixes: tuple[str, ...]
    queues: tuple[str, ...]

    @property
    def api_prefix(self) -> str:
        """Where the service also serves docs/, openapi.json and asyncapi.json (ServiceSpec.api_prefix)."""
        return self.prefixes[0]

    @property
    def docs_path(self) -> str:
        return f"{self.api_prefix}/docs"

    @property
    def upstream_env(self) -> str:
        """The variable deploy/traefik/dynamic.yml reads for this service's base URL."""
        return f"ITSM_{self.name.upper()}_UPSTREAM"

    @property
    def port_env(self) -> str:
        return f"ITSM_{self.name.upper()}_PORT"


def parse(text: str) -> tuple[Service, ...]:
    try:
        entries = tomllib.loads(text).get("service", [])
    except tomllib.TOMLDecodeError as exc:
        raise TableError(f"{TABLE}: {exc}") from exc
    table: list[Service] = []
    for index, entry in enumerate(entries):
        where = f"{TABLE} service #{index + 1}"
        unknown = set(entry) - {"name", "port", "prefixes", "queues"}
        if unknown:
            raise TableError(f"{where}: unknown keys {sorted(unknown)}")
        try:
            service = Service(
                name=entry["name"],
                port=entry["port"],
                prefixes=tuple(entry["prefixes"]),
                queues=tuple(entry.get("queues", ())),
            )
        except KeyError as exc:
            raise TableError(f"{where}: missing {exc.args[0]!r}") from exc
        _check(service, where)
        table.append(service)
    _check_unique(table)
    if ISSUER not in {s.name for s in table}:
        raise TableError(f"{TABLE}: no entry for {ISSUER!r}, the service that issues tokens")
    return tuple(table)


def _check(service: Service, where: str) -> None:
    if not isinstance(service.name, str) or not _NAME.fullmatch(service.name):
        raise TableError(f"{where}: name {service.name!r} must be lowercase letters and digits")
    if not isinstance(service.port, int) or not 1024 <= service.port <= 65535:
        raise TableError(f"{where}: port {service.port!r} must be an integer from 1024 to 65535")
    first, *others = service.prefixes or ("",)
    if not (
        isinstance(first, str)
        and _PREFIX.fullmatch(first)
        and all(isinstance(p, str) and (_PREFIX.fullmatch(p) or _WELL_KNOWN.fullmatch(p)) for p in others)
    ):
        raise TableError(
            f"{where}: prefixes {list(service.prefixes)} must be /api/v1/<segment>, at least one, first; "
            "then /api/v1/<segment> or /.well-known/<name>"
        )
    for queue in service.queues:
        # ARCHITECTURE.md: queues are named <consumer>.<purpose>.
        if not isinstance(queue, str) or not re.fullmatch(rf"{service.name}\.[a-z0-9-]+", queue):
            raise TableError(f"{where}: queue {queue!r} must be named {service.name}.<purpose>")


def _check_unique(table: Sequence[Service]) -> None:
    for what, values in (
        ("name", [s.name for s in table]),
        ("port", [str(s.port) for s in table]),
        ("prefix", [p for s in table for p in s.prefixes]),
        ("queue", [q for s in table for q in s.queues]),
    ):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise TableError(f"{TABLE}: {what} given twice: {', '.join(repeated)}")


@functools.cache
def table() -> tuple[Service, ...]:
    """Every service of the table, in start order."""
    return parse(TABLE.read_text())


def names() -> tuple[str, ...]:
    return tuple(s.name for s in table())


def get(name: str) -> Service:
    for service in table():
        if service.name == name:
            return service
    raise KeyError(f"no service {name!r} in {TABLE} (known: {', '.join(names())})")


# The service that keeps the audit log; it may replay stored events to the other services' consumer queues.
AUDITOR = "audit"


def replay_queues(table_: Sequence[Service] | None = None) -> tuple[str, ...]:
    """The queues the audit service's replay may publish to (ITSM_AUDIT_REPLAY_QUEUES): every consumer queue of the
    table but the log's own (replaying the log into itself would only bring duplicates)."""
    return tuple(q for s in (table() if table_ is None else table_) if s.name != AUDITOR for q in s.queues)


def main(argv: Sequence[str]) -> int:
    if argv == ["names"]:
        print(" ".join(names()))
    elif argv == ["ports"]:
        for service in table():
            print(service.name, service.port)
    else:
        print("usage: python3 deploy/service_table.py names|ports", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
