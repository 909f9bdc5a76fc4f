"""Numeric query parameters are bounded by their column's range (issue #11, point 12): schemathesis found
`GET /api/v1/problems?priority=-26423279263205196721815552` answering 500 (the integer reached the database)."""

from __future__ import annotations

import httpx
import pytest
from itsm_shared.testing_fixtures import Actor


@pytest.mark.parametrize("priority", ["-26423279263205196721815552", str(2**31), "0", "6"])
async def test_a_priority_beyond_its_range_is_422(client: httpx.AsyncClient, agent: Actor, priority: str) -> None:
    response = await client.get("/api/v1/incidents", headers=agent.headers, params={"priority": priority})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["query", "priority"]


async def test_a_priority_within_its_range_filters(client: httpx.AsyncClient, agent: Actor) -> None:
    assert (await client.get("/api/v1/incidents", headers=agent.headers, params={"priority": "5"})).status_code == 200
