from __future__ import annotations

from itsm_shared.app import ServiceSpec, create_app
from itsm_shared.contracts import ProblemIncidentLinkData, ProblemResolvedData

from problem import consumers
from problem.config import get_settings
from problem.router import known_errors_router, router
from problem.schemas import ProblemRead

app = create_app(
    ServiceSpec(
        name="problem",
        title="ITSM problem service",
        api_prefix="/api/v1/problems",
        routers=[router, known_errors_router],
        settings=get_settings(),
        consumers=consumers.register,
        background=[consumers.run],
        publishes={
            "itsm.problem.created": ProblemRead,
            "itsm.problem.updated": ProblemRead,
            "itsm.problem.status_changed": ProblemRead,
            "itsm.problem.known_error_published": ProblemRead,
            "itsm.problem.incident_linked": ProblemIncidentLinkData,
            "itsm.problem.incident_unlinked": ProblemIncidentLinkData,
            "itsm.problem.resolved": ProblemResolvedData,
        },
    )
)
