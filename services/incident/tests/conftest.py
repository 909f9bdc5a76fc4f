"""Incident tests: the shared fixtures (the `itsm` pytest plugin, itsm_shared.testing_fixtures) set for the
incident service, and a probe on its events."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from itsm_shared.testing import EventProbe, Listen
from itsm_shared.testing_fixtures import Actor


@pytest.fixture(scope="session")
def service_name() -> str:
    return "incident"


@pytest.fixture(scope="session")
def consumer_queues() -> tuple[str, ...]:
    return ("incident.problem-linked", "incident.problem-unlinked", "incident.problem-resolved")


@pytest.fixture(scope="session")
def extra_env() -> dict[str, str]:
    return {"ITSM_SLA_TICK_SECONDS": "0.1"}


@pytest.fixture
async def probe(listen: Listen) -> EventProbe:
    """Everything the incident service publishes (incident.*); short types mean incident.*."""
    return await listen("incident.#")


async def create(client: httpx.AsyncClient, who: Actor, **fields: Any) -> dict[str, Any]:
    body = {"title": "Mail is down", "impact": 2, "urgency": 2, **fields}
    response = await client.post("/api/v1/incidents", headers=who.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())
