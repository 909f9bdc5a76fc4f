from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from itsm_shared.settings import ServiceSettings
from pydantic import SecretStr, field_validator

# The `source` of its events and the name it runs under.
SERVICE = "auth"

MIN_PASSWORD, MAX_PASSWORD = 12, 256


class AuthSettings(ServiceSettings):
    bootstrap_admin_password: SecretStr | None = None
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 14 * 24 * 3600
    # A refresh family ends this long after its login, however actively it is used (ASVS 10.4.8).
    refresh_family_ttl_seconds: int = 30 * 24 * 3600
    # Failed logins, per account and client address: after this many in a row the address waits
    # login_delay_seconds, doubling with each further failure up to login_max_delay_seconds.
    max_failed_logins: int = 5
    login_delay_seconds: float = 1.0
    login_max_delay_seconds: float = 15 * 60
    # Failures older than this (and no longer delaying anyone) are forgotten.
    login_failure_memory_seconds: int = 24 * 3600
    # Which X-Forwarded-For entry is the client, counted from the right: 1 is the address the gateway reports
    # (Traefik replaces what a client sends). Behind a trusted load balancer in front of Traefik, 2.
    forwarded_for_depth: int = 1
    # Argon2id at m=64 MiB: at most this many hashes at once; this many more wait, up to argon2_wait_seconds;
    # beyond that the request is 503 with Retry-After.
    argon2_concurrency: int = 2
    argon2_queue: int = 8
    argon2_wait_seconds: float = 10.0
    # The key-encryption key of the signing keys (32 bytes, URL-safe base64), given to this service only:
    # in the environment or in a file. Previous KEKs (comma-separated) only decrypt, during a KEK rotation.
    auth_kek: SecretStr | None = None
    auth_kek_file: Path | None = None
    auth_kek_previous: SecretStr | None = None

    @field_validator("bootstrap_admin_password")
    @classmethod
    def _bootstrap_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None  # unset (docker-compose passes an empty value)
        if not MIN_PASSWORD <= len(value.get_secret_value()) <= MAX_PASSWORD:
            raise ValueError(
                f"ITSM_BOOTSTRAP_ADMIN_PASSWORD must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long "
                f"(it is {len(value.get_secret_value())}); the admin's password follows the rules of every password"
            )
        return value


@lru_cache
def get_settings() -> AuthSettings:
    return AuthSettings()
