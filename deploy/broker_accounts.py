"""The services' RabbitMQ users for a local stack (`make run`, the test harness): one per service,
`<broker user prefix><service>`, with the permissions of itsm_shared.broker_users (README, Security: the broker).

Passwords: the operator's ITSM_AMQP_PASSWORD_<SERVICE> (or ..._FILE), else one generated once per run dir (mode
0600), given to that service only. With a cluster's nodes in ITSM_AMQP_URLS, each service is given every node as
its own user. The runner creates or updates the users with `rabbitmqctl import_definitions`
(ITSM_RABBITMQCTL: the command that runs rabbitmqctl with the broker's rights; root's or the rabbitmq user's on the
broker's machine). Without those rights it goes on when the users already log in (created before, by an operator),
and otherwise stops, having written the definitions to import into the run dir, with the command to run.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import run_secrets
from itsm_shared.broker_users import (
    BrokerAdminError,
    Topology,
    create_users,
    definitions,
    delete_users,
    rabbitmqctl,
    url_as,
)

__all__ = ["Credential", "Topology", "credential", "ensure_users", "service_environment", "url_as"]

PASSWORD = "ITSM_AMQP_PASSWORD"  # noqa: S105 (the prefix of variables' names, not a password)
PASSWORD_FILE = "ITSM_AMQP_PASSWORD_FILE"  # noqa: S105 (what a service reads its own password from)
NODES = "ITSM_AMQP_URLS"  # a broker cluster's nodes, comma-separated (itsm_shared.settings)


class BrokerUsersUnavailable(RuntimeError):
    """The users could not be created and do not exist yet: the message says how to create them."""


@dataclass(frozen=True)
class Credential:
    """A service's broker password: its value (the operator's ITSM_AMQP_PASSWORD_<SERVICE>) or its file."""

    value: str | None = None
    file: Path | None = None

    def read(self) -> str:
        if self.value is not None:
            return self.value
        assert self.file is not None
        return self.file.read_text().rstrip("\r\n")


def password_file(run_dir: Path, service: str) -> Path:
    """The password of `service`'s broker user in the stack of `run_dir`, generated once (mode 0600)."""
    return run_secrets.secret_file(run_dir / f"amqp-password-{service}", lambda: secrets.token_urlsafe(32))


def credential(run_dir: Path, service: str, environ: Mapping[str, str]) -> Credential:
    variable = f"{PASSWORD}_{service.upper()}"
    if environ.get(variable):
        return Credential(value=environ[variable])
    if environ.get(f"{variable}_FILE"):
        return Credential(file=Path(environ[f"{variable}_FILE"]))
    return Credential(file=password_file(run_dir, service))


def is_broker_credential(variable: str) -> bool:
    """A variable carrying a broker password that is not simply handed on: some service's (each is given to that
    service only), or the operator's list of a cluster's nodes (ITSM_AMQP_URLS, as the broker's admin: each service
    is given the nodes with its own user instead)."""
    return variable.startswith(f"{PASSWORD}_") or variable == NODES


def nodes_of(value: str | None) -> list[str]:
    """The nodes of a cluster in ITSM_AMQP_URLS (comma-separated URLs); none when unset."""
    return [url.strip() for url in (value or "").split(",") if url.strip()]


def service_environment(
    admin_url: str, topology: Topology, service: str, secret: Credential, nodes: Sequence[str] = ()
) -> dict[str, str]:
    """ITSM_AMQP_URL (the service's user; its password in it, or in ITSM_AMQP_PASSWORD_FILE) and the user prefix;
    with a cluster's `nodes` (the operator's ITSM_AMQP_URLS), ITSM_AMQP_URLS: every node as the service's user, the
    first being ITSM_AMQP_URL (the service fails over between them: README, Deploying)."""
    env = {"ITSM_BROKER_USER_PREFIX": topology.user_prefix}
    password = secret.value
    if password is None:
        env[PASSWORD_FILE] = str(secret.file)
    urls = [url_as(url, topology.user(service), password) for url in (nodes or [admin_url])]
    env["ITSM_AMQP_URL"] = urls[0]
    if nodes:
        env[NODES] = ",".join(urls)
    return env


async def _log_in(url: str) -> bool:
    import aio_pika

    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception:
        return False
    await connection.close()
    return True


def all_log_in(admin_url: str, topology: Topology, passwords: Mapping[str, str]) -> bool:
    async def check() -> bool:
        urls = [url_as(admin_url, topology.user(s), p) for s, p in passwords.items()]
        return all(await asyncio.gather(*(_log_in(url) for url in urls)))

    return asyncio.run(check())


def ensure_users(
    admin_url: str,
    topology: Topology,
    secrets_of: Mapping[str, Credential],
    run_dir: Path,
    command: Sequence[str] | None = None,
) -> None:
    """Create or update the users of `secrets_of`'s services, with their permissions (see the module's text)."""
    passwords = {service: secret.read() for service, secret in secrets_of.items()}
    document = definitions(passwords, topology)
    try:
        create_users(document, command)
    except BrokerAdminError as exc:
        if all_log_in(admin_url, topology, passwords):
            return  # created earlier by someone with the rights; their permissions are theirs to keep up to date
        path = run_dir / "broker-users.json"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(document, file, indent=2)
        run = shlex.join([*(command or rabbitmqctl()), "import_definitions", str(path)])
        raise BrokerUsersUnavailable(
            f"{exc}\n  The users and their permissions are in {path} (mode 0600: it holds their passwords). As "
            f"someone with the broker's rights, run\n    {run}\n  then start again."
        ) from exc


def drop_users(topology: Topology, services: Sequence[str], command: Sequence[str] | None = None) -> None:
    delete_users([topology.user(service) for service in services], command)
