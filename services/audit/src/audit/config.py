from __future__ import annotations

from functools import lru_cache

from itsm_shared.settings import ServiceSettings
from pydantic import model_validator


class AuditSettings(ServiceSettings):
    # Unacknowledged messages the broker may hand the consumer at once: a batch waits for its commit before it
    # is acknowledged, so at least one batch must fit, and a few more keep the next batches filling meanwhile.
    consumer_prefetch: int = 1000
    # One transaction stores up to this many events, collected for at most `audit_batch_wait_ms`.
    audit_batch_size: int = 250
    audit_batch_wait_ms: float = 20.0
    # Longest pause between retries of a batch while the database is away.
    audit_retry_max_seconds: float = 5.0
    # Rows per query when walking the chain, exporting and replaying.
    audit_verify_chunk: int = 5000
    audit_export_chunk: int = 1000
    audit_replay_chunk: int = 500

    @model_validator(mode="after")
    def _a_batch_fits_the_prefetch(self) -> AuditSettings:
        if self.consumer_prefetch < self.audit_batch_size:
            raise ValueError("ITSM_CONSUMER_PREFETCH must be at least ITSM_AUDIT_BATCH_SIZE")
        if self.audit_batch_size < 1:
            raise ValueError("ITSM_AUDIT_BATCH_SIZE must be at least 1")
        return self


@lru_cache
def get_settings() -> AuditSettings:
    return AuditSettings()
