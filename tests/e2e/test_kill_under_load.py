"""Under a steady load of creates, the incident process is killed (SIGKILL) and started again. Every create the
service acknowledged (201) is exactly one row and exactly one `incident.created` event (one event id, however
often the broker delivers it) at an outside subscriber; nothing acknowledged is lost with the process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections import Counter

import asyncpg
import httpx
import stack as stack_module
from itsm_shared.db import asyncpg_dsn
from itsm_shared.testing import Listen

from .conftest import bearer

CREATORS = 8


async def test_every_acknowledged_create_is_one_row_and_one_event_across_a_kill(
    stack: stack_module.Stack, admin: str, listen: Listen
) -> None:
    probe = await listen("incident.created")
    marker = f"kill-{uuid.uuid4().hex[:8]}"
    acknowledged: list[str] = []
    refused: Counter[str] = Counter()
    stop = asyncio.Event()

    async def creator(client: httpx.AsyncClient) -> None:
        # Straight to the incident service: the gateway's per-client limits would shape the load.
        while not stop.is_set():
            try:
                response = await client.post(
                    "/api/v1/incidents",
                    headers=bearer(admin),
                    json={"title": marker, "impact": 2, "urgency": 2, "category": "load"},
                )
            except httpx.HTTPError as exc:
                refused[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            if response.status_code == 201:
                acknowledged.append(response.json()["id"])
            else:
                refused[str(response.status_code)] += 1

    async with httpx.AsyncClient(base_url=stack.settings.service_url("incident"), timeout=10) as client:
        tasks = [asyncio.create_task(creator(client)) for _ in range(CREATORS)]
        try:
            await asyncio.sleep(2)
            before_kill = len(acknowledged)
            assert stack.kill_service("incident", signal.SIGKILL) == -signal.SIGKILL
            await asyncio.to_thread(stack.start_service, "incident")
            await asyncio.sleep(2)
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await task
    assert before_kill > 0 and len(acknowledged) > before_kill, (before_kill, len(acknowledged), refused)

    conn = await asyncpg.connect(asyncpg_dsn(stack.settings.database_url))
    try:
        rows = await conn.fetch(
            "SELECT id::text AS id, count(*) OVER (PARTITION BY id) AS n FROM incident.incident WHERE title = $1",
            marker,
        )
    finally:
        await conn.close()
    stored = {r["id"]: r["n"] for r in rows}
    assert all(stored.get(i) == 1 for i in acknowledged), [i for i in acknowledged if stored.get(i) != 1]
    assert len(set(acknowledged)) == len(acknowledged)

    def every_create_published(p: object) -> bool:
        return set(acknowledged) <= {e["subject"] for e in probe.of(where=lambda e: e["data"]["title"] == marker)}

    await probe.until(every_create_published, timeout=30, what="incident.created of every acknowledged create")
    await asyncio.sleep(1)  # a duplicate publish after the restart would show by now
    ours = probe.of(where=lambda e: e["data"]["title"] == marker)
    ids_per_incident: dict[str, set[str]] = {}
    for event in ours:
        ids_per_incident.setdefault(event["subject"], set()).add(event["id"])
    assert all(len(ids_per_incident[i]) == 1 for i in acknowledged), "one event per create"
    # Creates committed whose answer the kill swallowed are rows and events too, never more than one each.
    assert set(ids_per_incident) == set(stored)
    print(f"acknowledged {len(acknowledged)}, rows {len(stored)}, refused {dict(refused)}, events {len(ours)}")
