from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from itsm_shared.settings import ServiceSettings
from pydantic import SecretStr, field_validator, model_validator


class AuditSettings(ServiceSettings):
    # Unacknowledged messages the broker may hand the consumer at once: a batch waits for its commit before it
    # is acknowledged, so at least one batch must fit, and a few more keep the next batches filling meanwhile.
    consumer_prefetch: int = 1000
    # One transaction stores up to this many events, collected for at most `audit_batch_wait_ms` (as the other
    # batch consumers: itsm_shared.batches.BATCH_WAIT says why 50).
    audit_batch_size: int = 250
    audit_batch_wait_ms: float = 50.0
    # Longest pause between retries of a batch while the database is away.
    audit_retry_max_seconds: float = 5.0
    # Rows per query when walking the chain, exporting and replaying.
    audit_verify_chunk: int = 5000
    audit_export_chunk: int = 1000
    audit_replay_chunk: int = 500
    # The anchor key (README, Audit): the Ed25519 private key (its 32-byte seed, URL-safe base64) that signs each
    # batch appended to the chain. Given to this service only, in the environment or in a file; never to the
    # database, the migration job or another service. The public halves of former keys (comma-separated, URL-safe
    # base64) still verify the anchors those keys signed.
    audit_anchor_key: SecretStr | None = None
    audit_anchor_key_file: Path | None = None
    audit_anchor_public_keys: str = ""
    # Upgrading a log from before anchoring: sign records 1..N at start, once (N as the service logs it).
    audit_anchor_adopt_through: int | None = None
    # The queues a replay may publish to: the services' consumer queues (deploy/services.toml) without
    # ITSM_QUEUE_PREFIX, comma-separated. The runner, compose and the chart set it from the table; empty: none.
    audit_replay_queues: str = ""

    @field_validator("audit_anchor_adopt_through", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _a_batch_fits_the_prefetch(self) -> AuditSettings:
        if self.consumer_prefetch < self.audit_batch_size:
            raise ValueError("ITSM_CONSUMER_PREFETCH must be at least ITSM_AUDIT_BATCH_SIZE")
        if self.audit_batch_size < 1:
            raise ValueError("ITSM_AUDIT_BATCH_SIZE must be at least 1")
        return self

    @property
    def replay_queues(self) -> frozenset[str]:
        return frozenset(q.strip() for q in self.audit_replay_queues.split(",") if q.strip())


@lru_cache
def get_settings() -> AuditSettings:
    return AuditSettings()
