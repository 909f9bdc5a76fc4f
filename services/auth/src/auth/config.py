from __future__ import annotations

from functools import lru_cache

from itsm_shared.settings import ServiceSettings

# The `source` of its events and the name it runs under.
SERVICE = "auth"


class AuthSettings(ServiceSettings):
    bootstrap_admin_password: str | None = None
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 14 * 24 * 3600
    # A refresh family ends this long after its login, however actively it is used (ASVS 10.4.8).
    refresh_family_ttl_seconds: int = 30 * 24 * 3600
    max_failed_logins: int = 5
    lockout_seconds: int = 15 * 60


@lru_cache
def get_settings() -> AuthSettings:
    return AuthSettings()
