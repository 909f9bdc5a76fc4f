"""What the incident HTTP API tests share (test_router_*.py): the state model of CONTRACT §4 as data, and helpers
that raise, move, read and list incidents and check problem+json answers."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from .conftest import Actor, create

API = "/api/v1/incidents"
PROBLEM = "application/problem+json"
STATUSES = ("new", "in_progress", "on_hold", "resolved", "closed", "cancelled")
ALLOWED = {  # CONTRACT §4
    "new": {"in_progress", "on_hold", "resolved", "cancelled"},
    "in_progress": {"on_hold", "resolved", "cancelled"},
    "on_hold": {"in_progress", "resolved", "cancelled"},
    "resolved": {"closed", "in_progress"},
    "closed": set(),
    "cancelled": set(),
}
REQUIRED = {"on_hold": ["hold_reason"], "resolved": ["resolution_code", "resolution_notes"]}
RESOLUTION = {"resolution_code": "fixed", "resolution_notes": "restarted the mail relay"}
NEEDS: dict[str, dict[str, Any]] = {"on_hold": {"hold_reason": "awaiting_vendor"}, "resolved": RESOLUTION}
PATH: dict[str, list[dict[str, Any]]] = {
    "new": [],
    "in_progress": [{"status": "in_progress"}],
    "on_hold": [{"status": "on_hold", "hold_reason": "awaiting_vendor"}],
    "resolved": [{"status": "in_progress"}, {"status": "resolved", **RESOLUTION}],
    "closed": [{"status": "resolved", **RESOLUTION}, {"status": "closed"}],
    "cancelled": [{"status": "cancelled"}],
}


def unique(prefix: str = "cat") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def with_cid(who: Actor, cid: str) -> dict[str, str]:
    return {**who.headers, "X-Correlation-ID": cid}


async def patch(client: httpx.AsyncClient, who: Actor, ref: Any, **fields: Any) -> dict[str, Any]:
    response = await client.patch(f"{API}/{ref}", headers=who.headers, json=fields)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def get(client: httpx.AsyncClient, who: Actor, ref: Any) -> dict[str, Any]:
    response = await client.get(f"{API}/{ref}", headers=who.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def history(client: httpx.AsyncClient, who: Actor, ref: Any) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/{ref}/history", headers=who.headers)
    assert response.status_code == 200, response.text
    return list(response.json())


async def reach(client: httpx.AsyncClient, who: Actor, status: str, **fields: Any) -> dict[str, Any]:
    incident = await create(client, who, **fields)
    for step in PATH[status]:
        incident = await patch(client, who, incident["id"], **step)
    assert incident["status"] == status
    return incident


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = dict(response.json())
    assert body["status"] == status and body["title"] and body["type"] and "detail" in body
    assert "Traceback" not in response.text
    return body


async def listed(client: httpx.AsyncClient, who: Actor, **params: Any) -> list[str]:
    response = await client.get(API, headers=who.headers, params={"limit": 200, **params})
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    return [i["id"] for i in response.json()["items"]]
