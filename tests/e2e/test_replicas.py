"""Issue #13, point 1: two replicas of every service behind the gateway, as one system, through a kill -9.

A stack of its own with two processes of every service. A known error waits for incidents of one configuration
item and category, and P5 (the priority of these incidents) has an SLA policy of seconds. A client creates such
incidents through the gateway at a steady pace, each with an Idempotency-Key, retrying the same key on a connection
error, a 5xx or a 409; meanwhile the second incident process is killed (SIGKILL) and started again. Then every
acknowledged create is exactly one row, one `incident.created` (one event id, however often the broker delivered
it, at a subscriber of our own bound to the exchange) and one audit record; the problem service's read model has
every incident at its last version and linked each one, once, to the known error; and each SLA warning and breach
of each incident fired once. The counts are printed (`pytest -s`) for the closing note."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import gateway as gateway_module
import httpx
import pytest
import stack as stack_module
from itsm_shared.db import asyncpg_dsn
from itsm_shared.testing import EventProbe, eventually, listening

from .conftest import bearer, isolated_stack, token
from .load import IdempotentCreates

pytestmark = pytest.mark.timeout(420)

REPLICAS = 2
KILLED = 1  # the second incident process
WORKERS = 3
PACE = 0.15  # seconds: each worker starts a create at most this often
BEFORE_KILL = 3.0  # seconds of load before the kill
AFTER_RESTART = 3.0  # and after the restarted process is back behind the gateway
SETTLE = 120.0  # seconds for every event, audit record and read-model row to arrive
# Response due in 1.2 s, resolution in 2.4 s: every incident warns and breaches twice while the test runs.
FAST_P5 = {"name": "seconds", "response_minutes": 0.02, "resolution_minutes": 0.04, "calendar": {"kind": "24x7"}}
SLA_FIRES = {(clock, threshold) for clock in ("response", "resolution") for threshold in ("warning", "breached")}
CREATED, LINKED = "itsm.incident.created", "itsm.problem.incident_linked"


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack_module.Stack]:
    # No service_env: the webhook service runs with its defaults here, as it always has in this test.
    with isolated_stack(tmp_path_factory.mktemp("replicas-run"), replicas=REPLICAS, service_env={}) as running:
        yield running


@dataclass
class State:
    """What the databases and the subscriber hold about the scenario's incidents at one moment."""

    rows: list[asyncpg.Record]
    clocks: list[asyncpg.Record]
    refs: dict[str, asyncpg.Record]
    links: list[asyncpg.Record]
    audit: list[asyncpg.Record]
    # Distinct event ids per (subject, type) and per (incident, clock, threshold) / linked incident.
    events: dict[tuple[str, str], set[str]]
    sla: dict[tuple[str, str, str], set[str]]
    linked: dict[str, set[str]]
    relevant: set[str]  # every distinct event id about the scenario's incidents and the known error

    def missing(self, ids: set[str], problem: str) -> dict[str, int]:
        """What is not there yet, by kind (empty: everything)."""
        versions = {r["id"]: r["version"] for r in self.rows}
        audited = {r["event_id"] for r in self.audit}
        missing = {
            "rows": len(ids - set(versions)),
            "incident.created": sum(not self.events.get((i, CREATED)) for i in ids),
            "SLA fires": sum(not self.sla.get((i, c, t)) for i in ids for c, t in SLA_FIRES),
            "incident_linked": sum(not self.linked.get(i) for i in ids),
            "problem_id on the incident": sum(r["problem_id"] != problem for r in self.rows),
            "read-model rows at the last version": sum(
                i not in self.refs or self.refs[i]["sequence"] != versions.get(i) for i in ids
            ),
            "audit records": len(self.relevant - audited),
        }
        return {kind: n for kind, n in missing.items() if n}

    def __repr__(self) -> str:
        return f"State({len(self.rows)} rows, {len(self.relevant)} events, {len(self.audit)} audit records)"


async def state(conn: asyncpg.Connection, probe: EventProbe, marker: str, problem: str) -> State:
    rows = await conn.fetch(
        "SELECT id::text AS id, title, version, problem_id::text AS problem_id FROM incident.incident"
        " WHERE title LIKE $1",
        f"{marker} #%",
    )
    ids = [r["id"] for r in rows]
    clocks = await conn.fetch(
        "SELECT incident_id::text AS incident_id, kind, warned, breached FROM incident.sla_clock"
        " WHERE incident_id = ANY($1::uuid[])",
        ids,
    )
    refs = await conn.fetch(
        "SELECT id::text AS id, title, sequence, deleted FROM problem.incident_ref WHERE id = ANY($1::uuid[])", ids
    )
    links = await conn.fetch(
        "SELECT incident_id::text AS incident_id, problem_id::text AS problem_id, automatic"
        " FROM problem.problem_incident WHERE incident_id = ANY($1::uuid[])",
        ids,
    )
    audit = await conn.fetch(
        "SELECT event_id::text AS event_id, type, subject FROM audit.audit_event WHERE subject = ANY($1::text[])",
        [*ids, problem],
    )
    mine = set(ids)
    events: dict[tuple[str, str], set[str]] = defaultdict(set)
    sla: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    linked: dict[str, set[str]] = defaultdict(set)
    relevant: set[str] = set()
    for event in probe.events:
        subject, data = event.get("subject"), event.get("data") or {}
        if subject in mine:
            relevant.add(event["id"])
            events[(subject, event["type"])].add(event["id"])
            if event["type"] in ("itsm.incident.sla_warning", "itsm.incident.sla_breached"):
                sla[(subject, data.get("clock"), data.get("threshold"))].add(event["id"])
        elif subject == problem:
            relevant.add(event["id"])
            if event["type"] == LINKED and data.get("incident_id") in mine:
                linked[data["incident_id"]].add(event["id"])
    return State(
        list(rows), list(clocks), {r["id"]: r for r in refs}, list(links), list(audit), events, sla, linked, relevant
    )


def answered_by(access_log: Path, address: str, start: int = 0, end: int | None = None) -> int:
    """Creates (201) the gateway's access log shows `address` answering, between two byte offsets."""
    with access_log.open("rb") as log:
        log.seek(start)
        lines = log.read(None if end is None else end - start).splitlines()
    count = 0
    for line in lines:
        entry: dict[str, Any] = json.loads(line)
        count += entry.get("ServiceAddr") == address and entry.get("DownstreamStatus") == 201
    return count


async def test_two_replicas_of_everything_through_a_kill_under_load(replicated: stack_module.Stack) -> None:
    s = replicated.settings
    marker = f"replicas-{uuid.uuid4().hex[:8]}"
    ci, category = f"ci-{marker}", "replicas"
    access_log = s.run_dir / gateway_module.ACCESS_LOG
    killed_address = f"127.0.0.1:{s.port('incident', KILLED)}"
    async with httpx.AsyncClient(base_url=s.gateway_url, timeout=15) as http:
        admin = bearer(str((await token(http, "admin", s.bootstrap_admin_password or ""))["access_token"]))
        # No incident was created yet, so no process holds the old P5 policy in its cache.
        assert (await http.put("/api/v1/sla-policies/5", headers=admin, json=FAST_P5)).status_code == 200
        known = {"title": "Replicas drop nothing", "configuration_item": ci, "category": category}
        problem = (await http.post("/api/v1/problems", headers=admin, json=known)).json()
        published = await http.patch(
            f"/api/v1/problems/{problem['id']}", headers=admin, json={"known_error": True, "workaround": "wait"}
        )
        assert published.status_code == 200, published.text

        amqp = await aio_pika.connect_robust(s.amqp_url)
        async with amqp, listening(amqp, s.exchange, "incident.#", "problem.#") as probe:
            load = IdempotentCreates(
                http, admin, body=lambda n: {"title": f"{marker} #{n}", "configuration_item": ci, "category": category}
            )
            running = asyncio.create_task(load.run(WORKERS, PACE))
            try:
                await asyncio.sleep(BEFORE_KILL)
                at_kill = access_log.stat().st_size
                before_kill = len(load.acknowledged)
                exit_code = await asyncio.to_thread(replicated.kill_service, "incident", signal.SIGKILL, replica=KILLED)
                assert exit_code == -signal.SIGKILL
                started = time.monotonic()
                # Returns once the process is ready and the gateway sends it requests again.
                await asyncio.to_thread(replicated.restart_service, "incident", replica=KILLED)
                restart_seconds = time.monotonic() - started
                at_restart = access_log.stat().st_size
                await asyncio.sleep(AFTER_RESTART)
            finally:
                load.stop()
                await running
            assert not load.refused, load.refused[:5]
            assert not load.unanswered, f"{len(load.unanswered)} creates never answered 201: {load.answers}"
            acknowledged = dict(load.acknowledged)
            ids = set(acknowledged.values())
            assert len(ids) == len(acknowledged), "one incident per key"
            assert before_kill > 0 and len(acknowledged) > before_kill

            conn = await asyncpg.connect(asyncpg_dsn(s.database_url))
            try:
                settled = time.monotonic()

                async def missing() -> dict[str, int]:
                    return (await state(conn, probe, marker, problem["id"])).missing(ids, problem["id"])

                await eventually(
                    missing,
                    lambda left: not left,
                    timeout=SETTLE,
                    interval=0.5,
                    what="every event, link, read-model row and audit record (last value: what is missing)",
                )
                settle_seconds = time.monotonic() - settled
                await asyncio.sleep(2)  # a duplicate (a second event or row for one create) would show by now
                final = await state(conn, probe, marker, problem["id"])
            finally:
                await conn.close()
        deliveries = Counter(e["id"] for e in probe.events if e["type"] == CREATED and e.get("subject") in ids)

    # Exactly one row per acknowledged create: its key's title, the id it was answered with; no other row.
    title_of = {key: load.sent[key]["title"] for key in acknowledged}
    rows_by_title = Counter(r["title"] for r in final.rows)
    assert all(rows_by_title[title_of[k]] == 1 for k in acknowledged), "one row per key"
    assert {r["id"] for r in final.rows} == ids and len(final.rows) == len(ids)
    assert {r["title"]: r["id"] for r in final.rows} == {title_of[k]: i for k, i in acknowledged.items()}
    # One incident.created per create (distinct event ids, however often each was delivered), none for another id.
    assert all(len(final.events[(i, CREATED)]) == 1 for i in ids)
    assert {subject for (subject, kind) in final.events if kind == CREATED} == ids
    # One audit record per event, and one incident.created record per create.
    audit_ids = Counter(r["event_id"] for r in final.audit)
    assert final.relevant <= set(audit_ids) and max(audit_ids.values()) == 1
    audited_creates = Counter(r["subject"] for r in final.audit if r["type"] == CREATED)
    assert audited_creates == Counter(ids), "one audit record of incident.created per create"
    # Each SLA threshold of each incident fired once: one event each, and the clocks say so.
    fires = {key: len(found) for key, found in final.sla.items()}
    assert set(fires) == {(i, c, t) for i in ids for c, t in SLA_FIRES} and set(fires.values()) == {1}
    assert all(c["warned"] and c["breached"] for c in final.clocks) and len(final.clocks) == 2 * len(ids)
    # The read model holds every incident at its last version; each was linked once, automatically, to the known error.
    versions = {r["id"]: r["version"] for r in final.rows}
    assert all(final.refs[i]["sequence"] == versions[i] and not final.refs[i]["deleted"] for i in ids)
    assert sorted(link["incident_id"] for link in final.links) == sorted(ids)
    assert all(link["problem_id"] == problem["id"] and link["automatic"] for link in final.links)
    assert all(len(final.linked[i]) == 1 for i in ids) and set(final.linked) == ids
    assert all(r["problem_id"] == problem["id"] for r in final.rows)

    served_before = answered_by(access_log, killed_address, 0, at_kill)
    served_after = answered_by(access_log, killed_address, at_restart)
    print(
        f"\nreplicas: {REPLICAS} of each of {', '.join(replicated.services)}; incident-{KILLED + 1} killed -9 after "
        f"{before_kill} acknowledged creates, back behind the gateway {restart_seconds:.1f} s later\n"
        f"creates: {len(load.sent)} keys sent, {len(acknowledged)} acknowledged (201), {len(load.retried)} retried "
        f"with their key; answers {dict(load.answers)}\n"
        f"incident-{KILLED + 1} answered {served_before} creates before the kill, {served_after} after its restart\n"
        f"rows: {len(final.rows)} (one per acknowledged key)\n"
        f"incident.created: {sum(deliveries.values())} deliveries at the subscriber, {len(deliveries)} distinct ids, "
        f"{len(ids)} incidents with exactly one\n"
        f"audit: one record for each of the {len(final.relevant)} distinct events the subscriber received "
        f"({len(final.audit)} records about these incidents and the known error, with its events from before the "
        f"subscriber was bound), {sum(audited_creates.values())} of incident.created\n"
        f"SLA: {sum(fires.values())} fires for {len(ids)} incidents x {len(SLA_FIRES)} thresholds, each once "
        f"(warnings {sum(n for (_, _, t), n in fires.items() if t == 'warning')}, "
        f"breaches {sum(n for (_, _, t), n in fires.items() if t == 'breached')})\n"
        f"problem: {len(final.refs)} read-model rows at the incident's last version, {len(final.links)} automatic "
        f"links, {sum(len(v) for v in final.linked.values())} incident_linked events\n"
        f"settled {settle_seconds:.1f} s after the load stopped"
    )
