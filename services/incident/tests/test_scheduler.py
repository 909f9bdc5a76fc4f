"""The SLA scheduler against the real database and broker: thresholds fire once each, on time, also with
several replicas at work and across restarts, and the due-clock query goes through its index.

The running app's own scheduler ticks every ITSM_SLA_TICK_SECONDS=0.1 (conftest). Extra "replicas" are
`scheduler.sla_loop` or `automation.fire_due_clocks` on engines of their own, as another process would have."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from incident import automation, scheduler
from itsm_shared.db import asyncpg_dsn, make_engine, session_factory, transaction
from itsm_shared.testing import EventProbe, Listen
from itsm_shared.testing import TestDatabase as Database
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .conftest import Actor, create
from .sla_support import Policies, at, policies_for, sla_counts

P5 = {"impact": 3, "urgency": 3}
THRESHOLDS = {(kind, threshold) for kind in ("response", "resolution") for threshold in ("warning", "breached")}


@pytest.fixture
async def policies(client: httpx.AsyncClient, admin: Actor) -> AsyncIterator[Policies]:
    async with policies_for(client, admin) as p:
        yield p


@pytest.fixture
async def sla(listen: Listen) -> EventProbe:
    """incident.sla_warning and incident.sla_breached as they arrive (a topic wildcard stands for whole words, so
    `incident.sla_*` would match neither)."""
    return await listen("incident.sla_warning", "incident.sla_breached")


async def until_fired(sla: EventProbe, subjects: list[str], each: int, timeout: float) -> None:
    """Until every subject has `each` SLA events."""
    await sla.until(lambda p: all(len(p.of(s)) >= each for s in subjects), timeout=timeout, what=f"{each} per subject")


@pytest.fixture
async def replica(database: Database, app: Any) -> AsyncIterator[Callable[[], async_sessionmaker[AsyncSession]]]:
    """Session factories on engines of their own (the app's login role), as other processes would have."""
    engines: list[AsyncEngine] = []

    def make() -> async_sessionmaker[AsyncSession]:
        engines.append(make_engine(database.app_url("incident"), pool_size=2))
        return session_factory(engines[-1])

    yield make
    for engine in engines:
        await engine.dispose()


@contextlib.asynccontextmanager
async def running(*loops: Awaitable[None]) -> AsyncIterator[None]:
    tasks = [asyncio.ensure_future(loop) for loop in loops]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def outbox_counts(database: Database, subjects: list[str]) -> Counter[tuple[str, str, str]]:
    """(subject, clock, threshold) of the SLA events in the outbox table, published or not."""
    conn = await asyncpg.connect(asyncpg_dsn(database.admin_url))
    try:
        rows = await conn.fetch(
            "SELECT payload->>'subject' AS subject, payload->'data'->>'clock' AS clock, payload->>'type' AS type"
            " FROM incident.outbox WHERE payload->>'type' LIKE 'itsm.incident.sla_%' AND payload->>'subject' = ANY($1)",
            subjects,
        )
    finally:
        await conn.close()
    return Counter((r["subject"], r["clock"], r["type"].removeprefix("itsm.incident.sla_")) for r in rows)


def expected_moment(created: dict[str, Any], clock: str, threshold: str) -> datetime:
    """When a threshold falls due, from the incident as created (24x7: started_at + fraction of the target)."""
    view = created["sla"][clock]
    fraction = 0.75 if threshold == "warning" else 1.0
    return at(view["started_at"]) + timedelta(seconds=fraction * view["target_seconds"])


async def test_warning_and_breach_fire_once_each_within_a_second(
    client: httpx.AsyncClient, agent: Actor, policies: Policies, sla: EventProbe, database: Database
) -> None:
    await policies.put(5, 0.05, 0.1)  # response 3 s, resolution 6 s
    created = {i["id"]: i for i in [await create(client, agent, **P5) for _ in range(3)]}
    subjects = list(created)
    await until_fired(sla, subjects, 4, timeout=15)
    await asyncio.sleep(1.0)  # room for a duplicate to show up
    counts = sla_counts(sla, subjects)
    assert counts == Counter({(s, c, t): 1 for s in subjects for c, t in THRESHOLDS}), counts
    assert await outbox_counts(database, subjects) == counts

    fired, delivered = [], []
    for arrival in sla.arrivals:
        event = arrival.event
        if event is None or event["subject"] not in created:
            continue
        incident = created[event["subject"]]
        clock, threshold = event["data"]["clock"], event["data"]["threshold"]
        assert event["type"] == f"itsm.incident.sla_{threshold}" and event["source"] == "/itsm/incident"
        assert event["actorid"] == "system"
        # The event names the clock's due moment, the one the incident showed when it was created.
        assert at(event["data"]["due_at"]) == at(incident["sla"][f"{clock}_due"])
        due = expected_moment(incident, clock, threshold)
        fired.append((event["time"] - due).total_seconds())
        delivered.append((arrival.received - due).total_seconds())
    print(
        f"\nSLA firing lateness over {len(fired)} events: event time - due moment min {min(fired):.3f} s, "
        f"max {max(fired):.3f} s; received - due moment min {min(delivered):.3f} s, max {max(delivered):.3f} s"
    )
    assert min(fired) >= 0, "a threshold fired before its moment"
    assert max(delivered) < 2.0, delivered

    breached = await client.get("/api/v1/incidents?sla_breached=true&priority=5&limit=200", headers=agent.headers)
    assert set(subjects) <= {i["id"] for i in breached.json()["items"]}
    clean = await client.get("/api/v1/incidents?sla_breached=false&priority=5&limit=200", headers=agent.headers)
    assert not set(subjects) & {i["id"] for i in clean.json()["items"]}
    one = (await client.get(f"/api/v1/incidents/{subjects[0]}", headers=agent.headers)).json()["sla"]
    assert one["breached"] and one["response"]["breached"] and one["resolution"]["breached"]


async def test_a_paused_clock_does_not_fire_and_fires_after_resuming(
    client: httpx.AsyncClient, agent: Actor, policies: Policies, sla: EventProbe
) -> None:
    await policies.put(5, 0.02, 0.04)  # response 1.2 s, resolution 2.4 s
    held = await create(client, agent, **P5)
    running_one = await create(client, agent, **P5)  # the control: it runs and fires
    # Out of `new` at once: the response is met; the resolution clock pauses.
    paused = await client.patch(
        f"/api/v1/incidents/{held['id']}",
        headers=agent.headers,
        json={"status": "on_hold", "hold_reason": "awaiting_vendor"},
    )
    assert paused.status_code == 200 and paused.json()["sla"]["resolution"]["paused"]
    await until_fired(sla, [running_one["id"]], 4, timeout=10)
    await asyncio.sleep(0.5)  # well past the held incident's original due moments
    assert len(sla.of(running_one["id"])) == 4
    assert sla.of(held["id"]) == []
    resumed = await client.patch(
        f"/api/v1/incidents/{held['id']}", headers=agent.headers, json={"status": "in_progress"}
    )
    assert resumed.status_code == 200
    due = at(resumed.json()["sla"]["resolution_due"])
    assert due > at(held["sla"]["resolution_due"]) + timedelta(seconds=2)  # moved by the hold
    await until_fired(sla, [held["id"]], 2, timeout=10)
    await asyncio.sleep(0.5)
    assert sla_counts(sla, [held["id"]]) == Counter({(held["id"], "resolution", "warning"): 1,
                                                  (held["id"], "resolution", "breached"): 1})  # fmt: skip
    breach = next(e for e in sla.of(held["id"]) if e["data"]["threshold"] == "breached")
    assert at(breach["data"]["due_at"]) == due
    assert (sla.arrival_of(breach).received - due).total_seconds() < 2.0


async def test_two_replicas_and_the_app_fire_each_threshold_exactly_once(
    client: httpx.AsyncClient,
    agent: Actor,
    policies: Policies,
    database: Database,
    replica: Callable[[], async_sessionmaker[AsyncSession]],
) -> None:
    await policies.put(5, 0.02, 0.05)  # response 1.2 s, resolution 3 s
    first, second = replica(), replica()

    async def small_passes(sessions: async_sessionmaker[AsyncSession]) -> None:
        # A replica passing often, a few incidents per transaction of the seam.
        while True:
            async with transaction(sessions) as session:
                await automation.fire_due_clocks(session, limit=7)
            await asyncio.sleep(0.005)

    loops = (
        scheduler.sla_loop(types.SimpleNamespace(sessions=first)),  # type: ignore[arg-type]
        scheduler.sla_loop(types.SimpleNamespace(sessions=second)),  # type: ignore[arg-type]
        small_passes(first),
        small_passes(second),
    )
    async with running(*loops):
        subjects = [(await create(client, agent, **P5))["id"] for _ in range(40)]
        want = Counter({(s, c, t): 1 for s in subjects for c, t in THRESHOLDS})
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            if set(await outbox_counts(database, subjects)) == set(want):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # room for a duplicate
    counts = await outbox_counts(database, subjects)
    assert counts == want, {k: n for k, n in counts.items() if n != 1} or set(want) - set(counts)


async def test_fired_flags_survive_a_restart(
    client: httpx.AsyncClient,
    agent: Actor,
    policies: Policies,
    sla: EventProbe,
    database: Database,
    replica: Callable[[], async_sessionmaker[AsyncSession]],
) -> None:
    await policies.put(5, 0.01, 0.02)  # response 0.6 s, resolution 1.2 s
    subjects = [(await create(client, agent, **P5))["id"] for _ in range(2)]
    await until_fired(sla, subjects, 4, timeout=10)
    before = await outbox_counts(database, subjects)
    assert sum(before.values()) == 8
    # A process started afresh (a new engine, nothing in memory) finds nothing left to fire for them.
    restarted = replica()
    while True:
        async with transaction(restarted) as session:
            if await automation.fire_due_clocks(session) == 0:
                break
    conn = await asyncpg.connect(asyncpg_dsn(database.admin_url))
    try:
        rows = await conn.fetch(
            "SELECT warned, breached, next_fire_at FROM incident.sla_clock WHERE incident_id = ANY($1::uuid[])",
            subjects,
        )
    finally:
        await conn.close()
    assert len(rows) == 4 and all(r["warned"] and r["breached"] and r["next_fire_at"] is None for r in rows)
    await asyncio.sleep(0.5)
    assert await outbox_counts(database, subjects) == before
    assert sla_counts(sla, subjects) == before


async def test_the_due_clock_query_uses_its_index(
    database: Database, replica: Callable[[], async_sessionmaker[AsyncSession]]
) -> None:
    # The statement fire_due_clocks really sends, captured on the way to the driver.
    sessions = replica()
    engine = sessions.kw["bind"]
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    async with transaction(sessions) as session:
        await automation.fire_due_clocks(session)
    statement, parameters = next((s, p) for s, p in sent if "FROM sla_clock" in s and "next_fire_at <=" in s)

    conn = await asyncpg.connect(asyncpg_dsn(database.admin_url))
    bulk = conn.transaction()
    await bulk.start()
    try:
        await conn.execute("SET LOCAL search_path = incident")
        # 20 000 incidents with two clocks each, rolled back at the end: most clocks stopped (no next moment),
        # one in ten running with its next moment ahead, a few due now.
        await conn.execute(
            """
            INSERT INTO incident (id, number, title, caller_id, impact, urgency, priority, status, created_by)
            SELECT gen_random_uuid(), 'TST' || lpad(n::text, 7, '0'), 'bulk', gen_random_uuid(), 3, 3, 5,
                   'in_progress', gen_random_uuid()
            FROM generate_series(1, 20000) AS n
            """
        )
        await conn.execute(
            """
            INSERT INTO sla_clock (id, incident_id, kind, target_seconds, calendar, state, started_at, next_fire_at)
            SELECT gen_random_uuid(), i.id, k.kind, 3600, '{"kind": "24x7"}', 'running', now(),
                   CASE WHEN random() < 0.9 THEN NULL
                        WHEN random() < 0.99 THEN now() + random() * interval '30 days'
                        ELSE now() - interval '1 second' END
            FROM incident i CROSS JOIN (VALUES ('response'), ('resolution')) AS k(kind)
            WHERE i.number LIKE 'TST%'
            """
        )
        await conn.execute("ANALYZE sla_clock")
        count = await conn.fetchval("SELECT count(*) FROM sla_clock")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {statement}", *parameters))
    finally:
        await bulk.rollback()
        await conn.close()
    print(f"\nplan of the due-clock query over {count} clocks:\n{plan}")
    assert count >= 40000
    assert "ix_sla_clock_next_fire" in plan
    assert "Seq Scan on sla_clock" not in plan
