"""The services' broker users: what each may configure, write and read (`itsm_shared.trust` says why), as RabbitMQ
definitions, and creating or deleting them with `rabbitmqctl` (the local runner, the test harness and the tests;
docker-compose.yml loads the same definitions at boot, Kubernetes has its User, Permission and TopicPermission
objects).

A service's user may
- configure (declare) the events exchange, its alternate exchange and queue, the dead-letter exchange, and its own
  queues (named `<queue_prefix><service>.<purpose>`, with their `.dlq`);
- write (publish, bind a queue to) the events exchange, but on it only its own routing keys (topic permission),
  its own queues, the alternate exchange (declaring the events exchange names it) and the dead-letter exchange
  (parking, and declaring queues that name it); the audit user also the default exchange (`amq.default`: its
  replays go to a queue by name), and not the events exchange, as it publishes no events;
- read (consume, bind from) its own queues and those exchanges, and on the events exchange bind only the routing
  keys of the services it consumes (topic permission).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from itsm_shared.trust import EVERYTHING, REPLAYER, Role, role

DEFAULT_EXCHANGE = "amq.default"  # the name RabbitMQ checks permissions of the default exchange ("") under
RABBITMQCTL = "ITSM_RABBITMQCTL"  # the command that runs rabbitmqctl against the broker (default: rabbitmqctl)
NOTHING = "^$"


@dataclass(frozen=True)
class Topology:
    """The names one deployment (or test session) uses: the settings of the same names (`ITSM_EXCHANGE` ...)."""

    exchange: str = "itsm.events"
    dead_letter_exchange: str = "itsm.dlx"
    queue_prefix: str = ""
    user_prefix: str = ""
    vhost: str = "/"

    def user(self, service: str) -> str:
        return f"{self.user_prefix}{service}"


def _any_of(names: Sequence[str], *patterns: str) -> str:
    alternatives = [re.escape(n) for n in names] + list(patterns)
    return "^(" + "|".join(alternatives) + ")$" if alternatives else NOTHING


def _keys(words: Sequence[str]) -> str:
    if EVERYTHING in words:
        return ".*"
    return "^(" + "|".join(re.escape(w) for w in words) + r")\." if words else NOTHING


def permissions(service: str, topology: Topology, of: Role | None = None) -> dict[str, str]:
    """The vhost permissions of `service`'s user (regular expressions over exchange and queue names)."""
    of = of or role(service)
    unrouted = f"{topology.exchange}.unrouted"
    own = re.escape(f"{topology.queue_prefix}{service}.") + ".*"
    shared = [topology.exchange, unrouted, topology.dead_letter_exchange]
    writes = [unrouted, topology.dead_letter_exchange]
    if of.publishes:
        writes.append(topology.exchange)
    if service == REPLAYER:
        writes.append(DEFAULT_EXCHANGE)
    return {"configure": _any_of(shared, own), "write": _any_of(writes, own), "read": _any_of(shared, own)}


def topic_permissions(service: str, topology: Topology, of: Role | None = None) -> dict[str, str]:
    """The topic permissions of `service`'s user on the events exchange (regular expressions over routing keys
    published, and over binding keys)."""
    of = of or role(service)
    return {"exchange": topology.exchange, "write": _keys(of.publishes), "read": _keys(of.binds)}


def definitions(
    passwords: Mapping[str, str], topology: Topology, roles: Mapping[str, Role] | None = None
) -> dict[str, Any]:
    """RabbitMQ definitions (`rabbitmqctl import_definitions`, `load_definitions`) of the users of the services in
    `passwords` (service -> password), with their permissions; `roles` overrides the trust table's."""
    roles = roles or {}
    users, grants, topics = [], [], []
    for service, password in passwords.items():
        name, of = topology.user(service), roles.get(service)
        users.append({"name": name, "password": password, "tags": []})
        grants.append({"user": name, "vhost": topology.vhost, **permissions(service, topology, of)})
        topics.append({"user": name, "vhost": topology.vhost, **topic_permissions(service, topology, of)})
    return {"users": users, "permissions": grants, "topic_permissions": topics}


def new_password() -> str:
    return secrets.token_urlsafe(24)


def url_as(amqp_url: str, user: str, password: str | None = None) -> str:
    """`amqp_url` (its host, port, vhost) logging in as `user` with `password` (None: none in the URL, the service
    reads it from ITSM_AMQP_PASSWORD_FILE)."""
    parts = urlsplit(amqp_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    login = quote(user, safe="") + ("" if password is None else f":{quote(password, safe='')}")
    netloc = f"{login}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, parts.fragment))


class BrokerAdminError(RuntimeError):
    """rabbitmqctl could not create or delete the users; the message says what to run instead."""


def rabbitmqctl(environ: Mapping[str, str] = os.environ) -> list[str]:
    return shlex.split(environ.get(RABBITMQCTL) or "rabbitmqctl")


def _run(command: list[str], *, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(  # noqa: S603 - the operator's rabbitmqctl command, fixed arguments
            command, input=input, text=True, capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(command, 127, "", f"{type(exc).__name__}: {exc}")


def create_users(document: Mapping[str, Any], command: Sequence[str] | None = None) -> None:
    """Create (or update) the users, permissions and topic permissions of `document` (from `definitions`) with
    `rabbitmqctl import_definitions`, reading them on its standard input (no password reaches a file)."""
    command = list(command or rabbitmqctl())
    result = _run([*command, "import_definitions", "--format", "json"], input=json.dumps(document))
    if result.returncode != 0:
        raise BrokerAdminError(
            f"could not create the services' RabbitMQ users with `{shlex.join(command)} import_definitions`: "
            f"{(result.stderr or result.stdout).strip()[-500:]}\n"
            f"  rabbitmqctl needs the rights of the broker's node (root or the rabbitmq user on its machine); set "
            f"{RABBITMQCTL} to a command that has them (e.g. 'sudo rabbitmqctl', 'docker exec <container> "
            "rabbitmqctl'), or create the users yourself (README, Security: the broker)."
        )


def delete_users(names: Sequence[str], command: Sequence[str] | None = None) -> None:
    """Delete the users (best effort: a user already gone is fine)."""
    if not names:
        return
    command = list(command or rabbitmqctl())
    quoted = ", ".join("<<" + json.dumps(n) + ">>" for n in names)
    code = f'[catch rabbit_auth_backend_internal:delete_user(U, <<"itsm">>) || U <- [{quoted}]], ok.'
    if _run([*command, "eval", code]).returncode == 0:
        return
    for name in names:  # the internal function moved: one command each
        _run([*command, "delete_user", name])
