"""Users and incident requests through the gateway, for the e2e incident tests (their `agent` and `requester`
fixtures are in conftest.py)."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import User

INCIDENTS = "/api/v1/incidents"


async def create(http: httpx.AsyncClient, who: User, cid: str | None = None, **fields: Any) -> dict[str, Any]:
    body = {"title": "Mail is down", "impact": 2, "urgency": 2, **fields}
    response = await http.post(INCIDENTS, headers=who.headers(cid), json=body)
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == f'"{response.json()["version"]}"'
    return dict(response.json())


async def patch(http: httpx.AsyncClient, who: User, ref: str, cid: str | None = None, **body: Any) -> dict[str, Any]:
    response = await http.patch(f"{INCIDENTS}/{ref}", headers=who.headers(cid), json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def get(http: httpx.AsyncClient, who: User, ref: str) -> dict[str, Any]:
    response = await http.get(f"{INCIDENTS}/{ref}", headers=who.headers())
    assert response.status_code == 200, response.text
    return dict(response.json())


async def listed(http: httpx.AsyncClient, who: User, **params: Any) -> list[str]:
    response = await http.get(INCIDENTS, headers=who.headers(), params=params)
    assert response.status_code == 200, response.text
    return [i["id"] for i in response.json()["items"]]


async def transitions(http: httpx.AsyncClient, who: User, ref: str) -> dict[str, list[str]]:
    response = await http.get(f"{INCIDENTS}/{ref}/transitions", headers=who.headers())
    assert response.status_code == 200, response.text
    return {t["status"]: t["required_fields"] for t in response.json()}


def assert_sla_block(incident: dict[str, Any]) -> None:
    sla = incident["sla"]
    assert sla["response_due"] and sla["resolution_due"], sla
    assert sla["response_due"] <= sla["resolution_due"]
    assert sla["breached"] is False
    for kind in ("response", "resolution"):
        assert {"due_at", "state", "paused", "breached", "percentage", "elapsed_seconds"} <= set(sla[kind]), sla
