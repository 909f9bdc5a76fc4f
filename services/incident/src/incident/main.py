from __future__ import annotations

from typing import Any

from itsm_shared.app import ServiceSpec, create_app

from incident import consumers, scheduler
from incident.config import get_settings
from incident.router import policies_router, router
from incident.schemas import IncidentRead

app = create_app(
    ServiceSpec(
        name="incident",
        title="ITSM incident service",
        api_prefix="/api/v1/incidents",
        routers=[router, policies_router],
        settings=get_settings(),
        consumers=consumers.register,
        background=[scheduler.sla_loop, scheduler.autoclose_loop],
        publishes={
            **{
                f"itsm.incident.{action}": IncidentRead
                for action in (
                    "created",
                    "updated",
                    "status_changed",
                    "assigned",
                    "sla_warning",
                    "sla_breached",
                    "deleted",
                )
            },
            "itsm.incident.note_added": dict[str, Any],
        },
    )
)
