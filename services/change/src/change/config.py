from __future__ import annotations

from functools import lru_cache

from itsm_shared.settings import ServiceSettings


class ChangeSettings(ServiceSettings):
    # How far ahead GET …/next-slot looks for a free window (ServiceNow's scheduling assistant: 90 days).
    change_next_slot_horizon_days: float = 90
    # The widest range GET /api/v1/changes/calendar answers for, and the most changes it lists.
    change_calendar_max_days: float = 366
    change_calendar_max_items: int = 10_000
    # The longest planned window of an RFC (its conflict check expands the blackouts over it).
    change_max_window_days: float = 366


@lru_cache
def get_settings() -> ChangeSettings:
    return ChangeSettings()
