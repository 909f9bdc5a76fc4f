from __future__ import annotations

from itsm_shared.app import Runtime, ServiceSpec, create_app

from webhook import consumers, delivery, housekeeping, signing
from webhook.config import SERVICE, get_settings
from webhook.router import router
from webhook.schemas import SubscriptionEvent


async def open_secret_box(rt: Runtime) -> None:
    """No start without the key of the signing secrets (the error names the setting)."""
    signing.box()


app = create_app(
    ServiceSpec(
        name=SERVICE,
        title="ITSM webhook service",
        api_prefix="/api/v1/webhooks",
        routers=[router],
        settings=get_settings(),
        consumers=consumers.register,
        on_startup=[open_secret_box],
        background=[consumers.run, delivery.run, housekeeping.prune_loop],
        publishes={
            f"itsm.webhook.{action}": SubscriptionEvent
            for action in (
                "subscription_created",
                "subscription_updated",
                "subscription_deleted",
                "secret_rotated",
                "subscription_disabled",
            )
        },
    )
)
