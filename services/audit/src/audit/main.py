from __future__ import annotations

from itsm_shared.app import ServiceSpec, create_app

from audit import consumers, ingest
from audit.config import get_settings
from audit.router import router

app = create_app(
    ServiceSpec(
        name="audit",
        title="ITSM audit service",
        api_prefix="/api/v1/audit",
        routers=[router],
        settings=get_settings(),
        consumers=consumers.register,
        on_startup=[ingest.prepare],
        background=[consumers.run_ingest],
        outbox=False,
    )
)
