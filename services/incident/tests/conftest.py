"""Incident tests: the shared fixtures (itsm_shared.testing_fixtures) for the incident service."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from itsm_shared.testing_fixtures import *  # noqa: F403
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


async def create(client: httpx.AsyncClient, who: Actor, **fields: Any) -> dict[str, Any]:
    body = {"title": "Mail is down", "impact": 2, "urgency": 2, **fields}
    response = await client.post("/api/v1/incidents", headers=who.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())
