from __future__ import annotations

from functools import lru_cache

from itsm_shared.settings import ServiceSettings


class ProblemSettings(ServiceSettings):
    pass


@lru_cache
def get_settings() -> ProblemSettings:
    return ProblemSettings()
