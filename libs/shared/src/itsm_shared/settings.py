"""Settings every service reads once at start (environment, prefix ITSM_)."""

from __future__ import annotations

from pathlib import Path
from typing import Self
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ITSM_", extra="ignore")

    # The service's own role URL at run time; an admin URL for `python -m itsm_shared.migrate`.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/itsm"
    # The service's own broker user (README, Security): `<broker_user_prefix><service>`, whose password is in the URL
    # or in `amqp_password_file` (read at start, used when the URL carries none).
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
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
    db_pool_size: int = 10
    db_statement_timeout_ms: int = 5000
    outbox_batch_size: int = 100
    outbox_sweep_seconds: float = 2.0
    consumer_prefetch: int = 32
    # Deliveries of one message before the broker parks it in the dead-letter queue.
    consumer_delivery_limit: int = 5
    # Password of the service login roles; unset where PostgreSQL trusts local connections.
    db_app_password: str | None = None
    log_level: str = "INFO"
    # Test hook: the process SIGKILLs itself when it reaches this named point (e.g. outbox.before_publish).
    fault_point: str | None = None

    @model_validator(mode="after")
    def _amqp_password_from_file(self) -> Self:
        if self.amqp_password_file is not None:
            parts = urlsplit(self.amqp_url)
            if parts.password is None:
                try:
                    secret = self.amqp_password_file.read_text().rstrip("\r\n")
                except OSError as exc:
                    raise ValueError(f"ITSM_AMQP_PASSWORD_FILE: cannot read {self.amqp_password_file}") from exc
                user, host = parts.netloc.rpartition("@")[::2]
                netloc = f"{user or 'guest'}:{quote(secret, safe='')}@{host}"
                self.amqp_url = urlunsplit(parts._replace(netloc=netloc))
        return self
