from __future__ import annotations

from typing import Any

from itsm_shared.app import ServiceSpec, create_app

from change.config import get_settings
from change.router import blackouts_router, router, templates_router
from change.schemas import BlackoutWindowRead, ChangeRead, TemplateRead

CHANGE_ACTIONS = ("created", "updated", "status_changed", "approved", "rejected", "scheduled", "implemented", "closed")

app = create_app(
    ServiceSpec(
        name="change",
        title="ITSM change service",
        api_prefix="/api/v1/changes",
        routers=[templates_router, router, blackouts_router],
        settings=get_settings(),
        publishes={
            **{f"itsm.change.{action}": ChangeRead for action in CHANGE_ACTIONS},
            "itsm.change.note_added": dict[str, Any],
            **{f"itsm.blackout_window.{action}": BlackoutWindowRead for action in ("created", "updated", "deleted")},
            **{f"itsm.standard_change_template.{action}": TemplateRead for action in ("created", "updated", "deleted")},
        },
    )
)
