from __future__ import annotations

from functools import lru_cache

from itsm_shared.settings import ServiceSettings


class IncidentSettings(ServiceSettings):
    incident_autoclose_days: float = 7
    # How often the SLA scheduler looks for clocks due; events fire within this of their due moment.
    sla_tick_seconds: float = 0.25
    autoclose_tick_seconds: float = 60


@lru_cache
def get_settings() -> IncidentSettings:
    return IncidentSettings()
