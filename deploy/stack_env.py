"""What each process of a local stack is given: the environment of a migration job and of a service process,
with the credentials of that service only (its database role's password, its broker user, the keys only it may
hold), and the broker users of the stack. The `Stack` of deploy/stack.py is one of these."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import broker_accounts
import service_table as services
from itsm_shared.broker_users import Topology
from processes import StackError
from run_secrets import (
    ANCHOR_VARIABLES,
    DB_PASSWORD_FILE,
    KEK_VARIABLES,
    LEGACY_DB_APP_PASSWORD,
    WEBHOOK,
    WEBHOOK_KEY_VARIABLES,
    audit_anchor_key_file,
    auth_kek_file,
    db_password_file,
    is_db_credential,
    webhook_secret_key_file,
)
from stack_settings import StackSettings


class StackEnvironments:
    """The environments and broker users of the processes of one stack (`settings`, `services`)."""

    settings: StackSettings
    services: list[str]

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

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        for service in services.table():
            env.pop(service.upstream_env, None)
        return env

    def broker_topology(self) -> Topology:
        s = self.settings
        return Topology(s.exchange, s.dead_letter_exchange, s.queue_prefix, s.broker_user_prefix)

    def broker_credential(self, name: str, environ: Mapping[str, str] | None = None) -> broker_accounts.Credential:
        s = self.settings
        operator = {**os.environ, **s.extra_env, **s.service_env.get(name, {}), **(environ or {})}
        return broker_accounts.credential(s.run_dir, name, operator)

    def broker_env(self, name: str, environ: Mapping[str, str]) -> dict[str, str]:
        """ITSM_AMQP_URL as the service's own broker user, its password (or its file), and the user prefix; with the
        operator's ITSM_AMQP_URLS (a cluster's nodes), every node as that user in ITSM_AMQP_URLS."""
        secret = self.broker_credential(name, environ)
        nodes = broker_accounts.nodes_of(environ.get(broker_accounts.NODES))
        topology = self.broker_topology()
        return broker_accounts.service_environment(self.settings.amqp_url, topology, name, secret, nodes)

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
