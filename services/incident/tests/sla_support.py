"""Helpers of the SLA API and scheduler tests: SLA policies changed for one test and put back afterwards (the
whole session shares one database), and counting the SLA events an `EventProbe` received."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from itsm_shared.testing import EventProbe

from .conftest import Actor

ALWAYS: dict[str, Any] = {"kind": "24x7"}


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


@dataclass
class Policies:
    """PUT policies for a test; `restore` puts back every one this test changed."""

    client: httpx.AsyncClient
    admin: Actor
    saved: dict[int, dict[str, Any]] = field(default_factory=dict)

    async def load(self) -> None:
        listed = await self.client.get("/api/v1/sla-policies", headers=self.admin.headers)
        assert listed.status_code == 200, listed.text
        self.saved = {p["priority"]: p for p in listed.json()}

    async def put(
        self, priority: int, response: float, resolution: float, calendar: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body = {
            "name": f"test P{priority}",
            "response_minutes": response,
            "resolution_minutes": resolution,
            "calendar": calendar or ALWAYS,
        }
        put = await self.client.put(f"/api/v1/sla-policies/{priority}", headers=self.admin.headers, json=body)
        assert put.status_code == 200, put.text
        return dict(put.json())

    async def restore(self) -> None:
        for priority, p in self.saved.items():
            body = {k: p[k] for k in ("name", "response_minutes", "resolution_minutes", "calendar")}
            put = await self.client.put(f"/api/v1/sla-policies/{priority}", headers=self.admin.headers, json=body)
            assert put.status_code == 200, put.text


@contextlib.asynccontextmanager
async def policies_for(client: httpx.AsyncClient, admin: Actor) -> AsyncIterator[Policies]:
    policies = Policies(client, admin)
    await policies.load()
    try:
        yield policies
    finally:
        await policies.restore()


def sla_counts(probe: EventProbe, subjects: list[str]) -> Counter[tuple[str, str, str]]:
    """(subject, clock, threshold) of the SLA events the probe received about `subjects`."""
    return Counter(
        (e["subject"], e["data"]["clock"], e["data"]["threshold"]) for e in probe.events if e["subject"] in subjects
    )
