from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from itsm_shared.settings import ServiceSettings
from pydantic import SecretStr, field_validator
from pydantic_settings import NoDecode

# The `source` of its events and the name it runs under.
SERVICE = "webhook"

# Standard Webhooks' schedule (seconds before each attempt): immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class WebhookSettings(ServiceSettings):
    # Consumed events are kept this long for replays (and the delivery log with them).
    webhook_retention_days: float = 7.0
    # Development and tests only: endpoints on loopback, private, link-local ... addresses, and plain http.
    webhook_allow_private_networks: bool = False
    # Seconds before each attempt of a delivery, the first counted from the event: "0,5,300" or "[0, 5, 300]".
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = RETRY_SCHEDULE
    # One attempt: connect, send, answer, all within this.
    webhook_timeout_seconds: float = 10.0
    # A claimed delivery is another replica's again after this long (its claimer died mid-attempt): above the
    # timeout, so a live attempt is never sent twice at once.
    webhook_claim_seconds: float = 30.0
    # An endpoint failing every attempt for this long is disabled (webhook.subscription_disabled).
    webhook_disable_after_seconds: float = 5 * 24 * 3600.0
    # Attempts in flight per replica, and per subscription (so a slow endpoint holds few of them).
    webhook_max_in_flight: int = 256
    webhook_endpoint_concurrency: int = 4
    # How often a replica looks for due deliveries without being woken (a NOTIFY wakes it at once).
    webhook_poll_seconds: float = 1.0
    webhook_prune_seconds: float = 3600.0
    # The key that encrypts the signing secrets at rest (32 bytes, URL-safe base64), given to this service only,
    # in the environment or in a file.
    webhook_secret_key: SecretStr | None = None
    webhook_secret_key_file: Path | None = None

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().removeprefix("[").removesuffix("]")
            value = [float(part) for part in text.split(",") if part.strip()]
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule_bounds(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(v < 0 for v in value):
            raise ValueError("ITSM_WEBHOOK_RETRY_SCHEDULE: at least one attempt, no negative delay")
        return value


@lru_cache
def get_settings() -> WebhookSettings:
    return WebhookSettings()
