"""Settings every service reads once at start (environment, prefix ITSM_), and the per-service database
credentials (`ITSM_DB_APP_PASSWORD_<SERVICE>`), which only that service's migration job reads."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Self
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

# The one password every `<svc>_app` role used to share (issue #11, finding 1): refused where it is found.
LEGACY_DB_APP_PASSWORD = "ITSM_DB_APP_PASSWORD"  # noqa: S105 (a variable's name, not a password)


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ITSM_", extra="ignore")

    # The service's own role URL at run time; an admin URL for `python -m itsm_shared.migrate`.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/itsm"
    # A file holding the password of the role in `database_url` (a compose or Kubernetes secret, or the file
    # `make run` generates in .run/), read at start and used when the URL carries no password.
    db_password_file: Path | None = None
    # The service's own broker user (README, Security): `<broker_user_prefix><service>`, whose password is in the URL
    # or in `amqp_password_file` (read at start, used when the URL carries none).
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # A broker cluster: its nodes' URLs, comma-separated (ITSM_AMQP_URLS), tried in turn by the outbox relay and the
    # consumers when the node they use fails; when set, `amqp_url` is its first. The password file fills in each.
    amqp_urls: str = ""
    amqp_password_file: Path | None = None
    # Every service's broker user is `<broker_user_prefix><service>`: consumers check an event's source against the
    # user the broker says published it (itsm_shared.trust).
    broker_user_prefix: str = ""
    exchange: str = "itsm.events"
    dead_letter_exchange: str = "itsm.dlx"
    # Prepended to consumer queue names, so an isolated stack (tests) never shares a queue with another.
    queue_prefix: str = ""
    jwks_url: str = "http://127.0.0.1:8101/api/v1/auth/jwks.json"
    # Every service reloads the JWKS this often: a revoked signing key stops verifying within one interval.
    jwks_refresh_seconds: float = 60.0
    jwt_issuer: str = "itsm-auth"
    jwt_audience: str = "itsm"
    db_pool_size: int = 20  # connections a process keeps at most (no overflow: itsm_shared.db.make_engine)
    db_statement_timeout_ms: int = 5000
    outbox_batch_size: int = 100
    outbox_sweep_seconds: float = 2.0
    consumer_prefetch: int = 32
    # Deliveries of one message before the broker parks it in the dead-letter queue.
    consumer_delivery_limit: int = 5
    log_level: str = "INFO"
    # Test hook: the process SIGKILLs itself when it reaches this named point (e.g. outbox.before_publish).
    fault_point: str | None = None

    @model_validator(mode="after")
    def _amqp_password_from_file(self) -> Self:
        urls = [u.strip() for u in self.amqp_urls.split(",") if u.strip()]
        if self.amqp_password_file is not None:
            password = quote(read_secret_file(self.amqp_password_file, "ITSM_AMQP_PASSWORD_FILE"), safe="")
            self.amqp_url = _with_password(self.amqp_url, password)
            urls = [_with_password(u, password) for u in urls]
        if urls:
            self.amqp_url = urls[0]
        self.amqp_urls = ",".join(urls)
        return self

    def broker_urls(self) -> list[str]:
        """The broker nodes to try, in order: ITSM_AMQP_URLS, else the one ITSM_AMQP_URL."""
        return self.amqp_urls.split(",") if self.amqp_urls else [self.amqp_url]

    @model_validator(mode="after")
    def _password_from_file(self) -> Self:
        if self.db_password_file is not None:
            url = make_url(self.database_url)
            if url.password is None:
                password = read_secret_file(self.db_password_file, "ITSM_DB_PASSWORD_FILE")
                self.database_url = url.set(password=password).render_as_string(hide_password=False)
        return self


def asyncpg_dsn(url: str) -> str:
    """The same URL in the form asyncpg.connect() takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    user, host = parts.netloc.rpartition("@")[::2]
    return urlunsplit(parts._replace(netloc=f"{user or 'guest'}:{password}@{host}"))


def read_secret_file(path: Path, variable: str) -> str:
    """A secret kept in a file (one line; a trailing newline is not part of it)."""
    try:
        value = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"{variable}: cannot read {path}: {exc.strerror}") from exc
    if not value:
        raise ValueError(f"{variable}: {path} is empty")
    return value


def db_app_password_variable(service: str) -> str:
    """The variable holding the password of `<service>_app`: `ITSM_DB_APP_PASSWORD_<SERVICE>`, or the same name
    with `_FILE` for a file holding it. One per service, so no process needs another service's credential."""
    return f"{LEGACY_DB_APP_PASSWORD}_{service.upper()}"


def db_app_password(service: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The password to give `<service>_app`, from that service's own variable or file; None when neither is set
    (the role keeps the password it has, or none where PostgreSQL trusts local connections)."""
    if environ.get(LEGACY_DB_APP_PASSWORD):
        raise ValueError(
            f"{LEGACY_DB_APP_PASSWORD} (one password for every service's role) is no longer read: give each service "
            f"its own, {db_app_password_variable(service)} or {db_app_password_variable(service)}_FILE"
        )
    variable = db_app_password_variable(service)
    if value := environ.get(variable):
        return value
    if path := environ.get(f"{variable}_FILE"):
        return read_secret_file(Path(path), f"{variable}_FILE")
    return None


def key_bytes(text: str, where: str, error: type[Exception], help_text: str) -> bytes:
    """A 32-byte key written in URL-safe base64 (padding optional); `error` naming `where` otherwise."""
    value = text.strip()
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise error(f"{where} is not 32 bytes in URL-safe base64. {help_text}")
    return raw


def configured_key(
    value: SecretStr | None, path: Path | None, variable: str, *, error: type[Exception], help_text: str, missing: str
) -> bytes:
    """A service's own 32-byte key from `<variable>` or the file `<variable>_FILE`, exactly one of them (auth's KEK,
    audit's anchor key, webhook's key of the signing secrets); `error` with a clear message otherwise."""
    given = value is not None and value.get_secret_value().strip() != ""
    if given and path is not None:
        raise error(f"set {variable} or {variable}_FILE, not both")
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise error(f"{variable}_FILE={path} cannot be read: {exc}") from exc
        return key_bytes(text, f"the key in {variable}_FILE={path}", error, help_text)
    if value is not None and given:
        return key_bytes(value.get_secret_value(), variable, error, help_text)
    raise error(missing)
