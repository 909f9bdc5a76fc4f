"""Issue #13, point 2: the services on a 3-node RabbitMQ cluster of the test's own (rabbit_cluster.py, beside the
machine's default node), every service given every node (ITSM_AMQP_URLS, as its own broker user). Under a steady
load of incident creates through the gateway (a client that retries with the same Idempotency-Key), the node
leading the consumers' quorum queues is stopped (`rabbitmqctl stop_app`), the load goes on, and the node is
started again. Nothing acknowledged is lost, nothing is doubled, no consumer is left stuck, and the services
recover by themselves: none is restarted.

It takes about two and a half minutes (the cluster about 30 s, the stack about a minute): `pytest -m cluster tests/e2e` runs it alone;
`make test` runs it with the rest of tests/e2e."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aio_pika
import asyncpg
import httpx
import pytest
import service_table as services
import stack as stack_module
from broker_accounts import NODES
from itsm_shared.broker_users import RABBITMQCTL
from itsm_shared.db import asyncpg_dsn
from itsm_shared.testing import EventProbe, eventually, listening
from processes import http_status

from .conftest import WEBHOOK_ENV, bearer, token
from .rabbit_cluster import Node, RabbitCluster, rabbit_cluster

pytestmark = pytest.mark.cluster

CREATORS = 6
BEFORE, OUTAGE, AFTER = 4.0, 10.0, 4.0  # seconds of load before the stop, while the node is down, after its start
SETTLE = 60.0  # how long everything may take to catch up after the load


class OnCluster(NamedTuple):
    cluster: RabbitCluster
    stack: stack_module.Stack


@pytest.fixture(scope="module")
def on_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnCluster]:
    """Every service, each given every node of the cluster; the users made through the first node's rabbitmqctl.
    The migrations (no broker needed) run while the nodes start."""
    run_dir = tmp_path_factory.mktemp("cluster-run")
    made: list[stack_module.Stack] = []

    def migrate(cluster: RabbitCluster) -> None:
        settings = stack_module.StackSettings.isolated(
            run_dir,
            amqp_url=cluster.nodes[0].url,
            extra_env={NODES: ",".join(cluster.urls)},
            service_env={"webhook": WEBHOOK_ENV},
            die_with_parent=True,
            migrate=False,
        )
        made.append(stack_module.Stack(settings))
        for name in made[0].services:
            made[0].migrate(name)

    try:
        with rabbit_cluster(3, meanwhile=migrate) as cluster:
            running = made[0]
            with pytest.MonkeyPatch.context() as env:
                env.setenv(RABBITMQCTL, shlex.join(cluster.ctl_command(cluster.nodes[0])))
                running.start()
            try:
                yield OnCluster(cluster, running)
            finally:
                running.stop()
    finally:
        if made:
            made[0].drop_database()  # the users, queues and exchanges go with the cluster


@dataclass
class Load:
    """Creators that each create one incident after another, retrying a create with its Idempotency-Key until it
    is acknowledged (201); a create left unanswered when the load stops is `unsettled` (it may still exist)."""

    client: httpx.AsyncClient
    headers: dict[str, str]
    marker: str
    acknowledged: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> incident id
    at: dict[str, float] = field(default_factory=dict)  # Idempotency-Key -> when it was acknowledged
    errors: Counter[str] = field(default_factory=Counter)
    unsettled: set[str] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def creator(self) -> None:
        while not self.stop.is_set():
            await self.create(str(uuid.uuid4()))

    async def create(self, key: str) -> None:
        give_up = None
        while True:
            try:
                response = await self.client.post(
                    "/api/v1/incidents",
                    headers={**self.headers, "Idempotency-Key": key},
                    json={"title": self.marker, "impact": 3, "urgency": 3, "category": "cluster"},
                )
                if response.status_code == 201:
                    self.acknowledged[key] = response.json()["id"]
                    self.at[key] = time.monotonic()
                    return
                self.errors[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                self.errors[type(exc).__name__] += 1
            if self.stop.is_set():
                give_up = give_up or time.monotonic() + 20
                if time.monotonic() > give_up:
                    self.unsettled.add(key)
                    return
            await asyncio.sleep(0.1)

    def ids(self) -> set[str]:
        return set(self.acknowledged.values())

    def between(self, start: float, end: float) -> int:
        return sum(1 for t in self.at.values() if start <= t < end)


@contextlib.asynccontextmanager
async def running(load: Load) -> AsyncIterator[Load]:
    tasks = [asyncio.create_task(load.creator()) for _ in range(CREATORS)]
    try:
        yield load
    finally:
        load.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def consumer_queues(stack: stack_module.Stack) -> list[str]:
    prefix = stack.settings.queue_prefix
    return [prefix + q for name in stack.services for q in services.get(name).queues]


async def test_stopping_the_quorum_queue_leader_under_load_loses_nothing_and_stalls_nothing(
    on_cluster: OnCluster,
) -> None:
    began = time.monotonic()
    cluster, cluster_stack = on_cluster
    s = cluster_stack.settings
    dsn = asyncpg_dsn(s.database_url)
    queues = consumer_queues(cluster_stack)
    leaders = await asyncio.to_thread(cluster.leaders, cluster.nodes[-1], queues)
    assert all(leaders.values()), f"every consumer queue is a quorum queue with a leader: {leaders}"
    leader = cluster.node(Counter(leaders.values()).most_common(1)[0][0])
    led = sum(1 for node in leaders.values() if node == leader.name)
    witness: Node = next(n for n in cluster.nodes if n is not leader)  # the outside subscriber's node, never stopped
    pids = {key: process.pid for key, process in cluster_stack.processes.items()}

    subscriber = await aio_pika.connect_robust(witness.url)
    async with (
        listening(subscriber, s.exchange, "incident.created") as probe,
        httpx.AsyncClient(base_url=s.gateway_url, timeout=15) as client,
    ):
        password = s.bootstrap_admin_password
        assert password
        admin = (await token(client, "admin", password))["access_token"]
        load = Load(client, bearer(admin), f"cluster-{uuid.uuid4().hex[:8]}")
        async with running(load):
            await asyncio.sleep(BEFORE)
            stopping = time.monotonic()
            await asyncio.to_thread(cluster.ctl, leader, "stop_app")
            stopped = time.monotonic()
            assert leader.name not in await asyncio.to_thread(cluster.running_nodes, witness)
            await asyncio.sleep(OUTAGE)
            # While the node is down: what was created meanwhile is published (the relays moved on) and consumed
            # (the consumers moved on, the queues have new leaders).
            outage_ids = {i for k, i in load.acknowledged.items() if stopped <= load.at[k]}
            published = {e["subject"] for e in probe.of(where=lambda e: e["data"]["title"] == load.marker)}
            audited = await fetch(
                dsn, "SELECT count(*) AS n FROM audit.audit_event WHERE subject = ANY($1::text[])", list(outage_ids)
            )
            during = {"created": len(outage_ids), "published": len(outage_ids & published), "audited": audited[0]["n"]}
            new_leaders = await asyncio.to_thread(cluster.leaders, witness, queues)
            starting = time.monotonic()
            await asyncio.to_thread(cluster.ctl, leader, "start_app")
            started = time.monotonic()
            await asyncio.sleep(AFTER)
        ended = time.monotonic()
        ids = load.ids()
        assert not load.unsettled, f"creates never acknowledged after the load: {load.unsettled}"
        counts = {
            "before": load.between(0, stopping),
            "outage": load.between(stopped, starting),
            "after": load.between(started, ended),
        }
        assert all(counts.values()), f"creates acknowledged in every phase: {counts}, errors {dict(load.errors)}"
        assert during["published"] > 0 and during["audited"] > 0, f"nothing flowed while the leader was down: {during}"
        assert all(new_leaders[q] != leader.name for q in queues), f"new leaders elected: {new_leaders}"

        # Every acknowledged create: one row ...
        rows = await fetch(dsn, "SELECT id::text AS id FROM incident.incident WHERE title = $1", load.marker)
        stored = Counter(r["id"] for r in rows)
        assert ids <= set(stored) and set(stored.values()) == {1}, "one row per acknowledged create"

        # ... one incident.created (by event id) at the outside subscriber, nothing for anything else ...
        def all_published(p: EventProbe) -> bool:
            return set(stored) <= {e["subject"] for e in p.of(where=lambda e: e["data"]["title"] == load.marker)}

        await probe.until(all_published, timeout=SETTLE, what="incident.created of every stored create")
        await asyncio.sleep(1)  # a late duplicate would show by now
        ours = probe.of(where=lambda e: e["data"]["title"] == load.marker)
        event_ids: dict[str, set[str]] = {}
        for event in ours:
            event_ids.setdefault(event["subject"], set()).add(event["id"])
        assert set(event_ids) == set(stored), "events only for stored incidents"
        assert all(len(v) == 1 for v in event_ids.values()), "one event id per create"
        the_ids = [next(iter(event_ids[i])) for i in stored]

        # ... one audit record and one row in problem's read model.
        async def audited_once() -> list[asyncpg.Record]:
            return await fetch(
                dsn, "SELECT event_id::text AS id FROM audit.audit_event WHERE event_id = ANY($1::uuid[])", the_ids
            )

        records = await eventually(audited_once, check=lambda r: len(r) >= len(the_ids), timeout=SETTLE)
        assert Counter(r["id"] for r in records) == Counter(the_ids), "one audit record per event"

        async def read_model() -> list[asyncpg.Record]:
            return await fetch(
                dsn, "SELECT id::text AS id FROM problem.incident_ref WHERE id = ANY($1::uuid[])", list(stored)
            )

        known = await eventually(read_model, check=lambda r: len(r) == len(stored), timeout=SETTLE)

    await subscriber.close()

    # No consumer stuck: every queue drained, with its consumer attached; nothing parked. No relay stuck.
    async def queue_state() -> dict[str, tuple[int, int]]:
        rows = await asyncio.to_thread(cluster.queues, witness, "name", "messages", "consumers")
        return {row[0]: (int(row[1]), int(row[2])) for row in rows if row[0].startswith(s.queue_prefix)}

    def settled(state: dict[str, tuple[int, int]]) -> bool:
        return all(state.get(q, (1, 0))[0] == 0 and state.get(q, (1, 0))[1] >= 1 for q in queues)

    state = await eventually(queue_state, check=settled, timeout=SETTLE, interval=1, what="queues drained, consumed")
    parked = {q: n for q, (n, _) in state.items() if q.endswith(".dlq") and n}
    assert not parked, f"messages parked: {parked}"
    outboxes = [name for name in cluster_stack.services if name != services.AUDITOR]

    async def unpublished() -> dict[str, int]:
        rows = await fetch(
            dsn,
            " UNION ALL ".join(
                f"SELECT '{name}' AS svc, count(*) AS n FROM {name}.outbox WHERE published_at IS NULL"
                for name in outboxes
            ),
        )
        return {r["svc"]: r["n"] for r in rows}

    await eventually(unpublished, check=lambda left: not any(left.values()), timeout=SETTLE, what="outboxes empty")

    # The services recovered by themselves: the same processes, ready.
    assert {key: process.pid for key, process in cluster_stack.processes.items()} == pids, "no process restarted"

    async def readiness() -> dict[str, int | None]:
        return {
            instance: await asyncio.to_thread(http_status, f"{s.service_url(name, replica)}/readyz")
            for name, replica in cluster_stack.instances()
            for instance in [stack_module.instance(name, replica)]
        }

    await eventually(readiness, check=lambda codes: set(codes.values()) == {200}, timeout=30, what="every /readyz")

    print(
        f"\nbroker cluster: {leader.name}, leader of {led} of the {len(queues)} consumer queues, stopped for "
        f"{starting - stopped:.1f}s (stop_app {stopped - stopping:.1f}s, start_app {started - starting:.1f}s); "
        f"acknowledged {len(ids)} creates (before {counts['before']}, while down {counts['outage']}, "
        f"after {counts['after']}), load errors {dict(load.errors)}; rows {len(stored)}; incident.created "
        f"deliveries {len(ours)} for {len(event_ids)} incidents ({len(ours) - len(event_ids)} duplicate deliveries); "
        f"audit records {len(records)}; problem read model {len(known)}; while down: {during}; "
        f"queues (messages, consumers) { ({q: state[q] for q in queues}) }; test {time.monotonic() - began:.0f}s"
    )
