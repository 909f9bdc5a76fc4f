"""Helpers of the SLA API and scheduler tests: SLA policies changed for one test and put back afterwards (the
whole session shares one database), and a probe that timestamps incident.sla_* events as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
from itsm_shared.testing import parse_cloudevent

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


@dataclass
class Arrival:
    event: dict[str, Any]
    received: datetime

    @property
    def key(self) -> tuple[str, str, str]:
        """(subject, clock, threshold)"""
        return self.event["subject"], self.event["data"]["clock"], self.event["data"]["threshold"]


@dataclass
class SlaProbe:
    arrivals: list[Arrival] = field(default_factory=list)

    def of(self, subject: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.event["subject"] == subject]

    def counts(self, subjects: list[str]) -> Counter[tuple[str, str, str]]:
        return Counter(a.key for a in self.arrivals if a.event["subject"] in subjects)

    async def wait_for(self, subjects: list[str], per_subject: int, timeout: float) -> None:
        """Until every subject has `per_subject` events, or the deadline."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if all(len(self.of(s)) >= per_subject for s in subjects):
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def sla_events(amqp: aio_pika.abc.AbstractRobustConnection, exchange: str) -> AsyncIterator[SlaProbe]:
    """An exclusive queue bound to the session's exchange for both SLA event types, consumed as messages arrive.
    (Two bindings: a topic wildcard stands for whole words, so `incident.sla_*` would match neither.)"""
    probe = SlaProbe()
    channel = await amqp.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    for key in ("incident.sla_warning", "incident.sla_breached"):
        await queue.bind(await channel.get_exchange(exchange), key)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        probe.arrivals.append(Arrival(parse_cloudevent(message.body), datetime.now(UTC)))

    tag = await queue.consume(on_message, no_ack=True)
    try:
        yield probe
    finally:
        await queue.cancel(tag)
        await channel.close()
