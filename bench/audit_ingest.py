"""Benchmark: the audit service's ingest rate against the raw RabbitMQ consume+ack rate, in the same run.

A scratch database gets the audit service's real migrations; a scratch exchange gets two quorum queues of the
same shape (`itsm_shared.broker.event_queue`, bound with `#`): the audit service's `audit.ingest` and a
baseline queue. N CloudEvents shaped like the services' (an `incident.updated` with the incident in `data`,
about 1 KB) are published once, so both queues hold the same N messages. Then, per round:

1. raw: one Python process (this one) drains the baseline queue with aio-pika, prefetch as the audit
   service's, acknowledging each message and doing nothing else: the floor of "consume and ack" here;
2. audit: the real service (`uvicorn audit.main:app`, its own process, default settings) drains its queue:
   parse and validate each CloudEvent, batch, normalise through jsonb, hash-chain, one INSERT per batch under
   the chain lock, commit, acknowledge.

Both rates count from the first message handled to the last (the audit side from the stored `received_at`
of its first and last batch), so process start-up is not in them. Rounds alternate and refill both queues.
Target: audit >= 0.5 x raw. For reference, raw is also measured acknowledging 250 at a time (one
`basic.ack(multiple)`, as the audit service does). Then a live round: the service running while four
producers publish N events as fast as publisher confirms allow, and how long after the last publish every
event is stored. Everything scratch is removed at the end, also on failure or Ctrl-C.

    uv run python bench/audit_ingest.py [--events 20000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
from itsm_shared.broker import declare_topology, event_queue, make_broker
from itsm_shared.db import asyncpg_dsn
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, new_event
from itsm_shared.provision import app_url
from itsm_shared.settings import ServiceSettings
from itsm_shared.testing import TestDatabase, create_database, drop_database, migrate, remove_topology, test_names

SERVER = os.environ.get("ITSM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("ITSM_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TARGET = 0.5


def incident_event(n: int) -> dict[str, Any]:
    incident_id = uuid.uuid4()
    data = {
        "id": str(incident_id),
        "number": f"INC{n:07d}",
        "title": f"Mail delivery delayed for the finance department ({n})",
        "description": "Users report that outgoing mail sits in the outbox for several minutes before sending.",
        "caller_id": str(uuid.uuid4()),
        "category": "email",
        "configuration_item": "mail-gateway-02",
        "impact": 2,
        "urgency": 2,
        "priority": 3,
        "status": "in_progress",
        "hold_reason": None,
        "assignment_group": "messaging",
        "assignee_id": str(uuid.uuid4()),
        "problem_id": None,
        "reopen_count": 0,
        "created_at": datetime.now(UTC).isoformat(),
        "updated_at": datetime.now(UTC).isoformat(),
        "version": 2,
    }
    return new_event(
        service="incident",
        type="incident.updated",
        subject=incident_id,
        data=data,
        actor=uuid.uuid4(),
        sequence=2,
        changes={"status": ["new", "in_progress"]},
    )


async def fill(
    channel: aio_pika.abc.AbstractChannel, exchange: str, bodies: list[tuple[str, bytes]], key: str = "incident.updated"
) -> None:
    target = await channel.get_exchange(exchange) if exchange else channel.default_exchange
    for start in range(0, len(bodies), 500):
        await asyncio.gather(
            *(
                target.publish(
                    aio_pika.Message(
                        body,
                        message_id=event_id,
                        content_type=CLOUDEVENTS_CONTENT_TYPE,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=key,
                )
                for event_id, body in bodies[start : start + 500]
            )
        )


async def raw_rate(amqp: str, queue: str, count: int, prefetch: int, ack_every: int = 1) -> float:
    connection = await aio_pika.connect(amqp)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        source = await channel.declare_queue(queue, passive=True)
        done = asyncio.Event()
        seen = 0
        first = last = 0.0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen, first, last
            seen += 1
            n = seen  # the callbacks run as tasks: keep this delivery's number across the await
            if n == 1:
                first = time.perf_counter()
            if n % ack_every == 0 or n == count:
                await message.ack(multiple=ack_every > 1)
            if n == count:
                last = time.perf_counter()
                done.set()

        tag = await source.consume(on_message)
        await asyncio.wait_for(done.wait(), timeout=600)
        await source.cancel(tag)
        return (count - 1) / (last - first)
    finally:
        await connection.close()


def start_audit(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "audit.main:app", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        for _ in range(300):
            if process.poll() is not None:
                raise SystemExit("audit service exited")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    await asyncio.sleep(1)  # the ingest channel attaches right after the broker is up
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("audit service not ready within 30 s")


async def wait_count(db: TestDatabase, count: int) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(db.admin_url))
    try:
        deadline = time.monotonic() + 600
        while await conn.fetchval("SELECT count(*) FROM audit.audit_event") < count:
            if time.monotonic() > deadline:
                raise SystemExit("the audit service did not store every event within 10 minutes")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def audit_rate(db: TestDatabase, env: dict[str, str], before: int, count: int) -> tuple[float, int]:
    """Start the service, wait until it stored `count` more records, stop it. (rate, batches)."""
    process = start_audit(env, 18905)
    conn: asyncpg.Connection | None = None
    try:
        conn = await asyncpg.connect(asyncpg_dsn(db.admin_url))
        deadline = time.monotonic() + 600
        while await conn.fetchval("SELECT count(*) FROM audit.audit_event") < before + count:
            if process.poll() is not None:
                raise SystemExit(f"audit service exited:\n{process.stderr.read().decode() if process.stderr else ''}")
            if time.monotonic() > deadline:
                raise SystemExit("audit service did not store every event within 10 minutes")
            await asyncio.sleep(0.1)
        span = await conn.fetchrow(
            """SELECT min(received_at) AS first, max(received_at) AS last, count(DISTINCT received_at) AS batches,
                      count(*) FILTER (WHERE received_at = (SELECT min(received_at) FROM audit.audit_event
                                                            WHERE seq > $1)) AS first_batch
               FROM audit.audit_event WHERE seq > $1""",
            before,
        )
        seconds = (span["last"] - span["first"]).total_seconds()
        return (count - span["first_batch"]) / seconds, span["batches"]
    finally:
        stop(process)
        if conn is not None:
            await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    names = test_names()
    db = await create_database(SERVER, "itsm_bench_audit")
    settings = ServiceSettings(
        database_url=app_url(db.admin_url, "audit"),
        amqp_url=AMQP,
        exchange=names["exchange"],
        dead_letter_exchange=names["dead_letter_exchange"],
        queue_prefix=names["queue_prefix"],
    )
    from audit.config import AuditSettings

    audit_defaults = AuditSettings()
    ingest = f"{names['queue_prefix']}audit.ingest"
    baseline = f"{names['queue_prefix']}bench.raw"
    env = {
        "ITSM_DATABASE_URL": settings.database_url,
        "ITSM_AMQP_URL": AMQP,
        "ITSM_EXCHANGE": settings.exchange,
        "ITSM_DEAD_LETTER_EXCHANGE": settings.dead_letter_exchange,
        "ITSM_QUEUE_PREFIX": settings.queue_prefix,
        "ITSM_LOG_LEVEL": "WARNING",
    }
    connection: aio_pika.abc.AbstractConnection | None = None
    try:
        result = migrate("audit", db.admin_url)
        if result.returncode != 0:
            raise SystemExit(f"migration failed:\n{result.stderr}")
        broker = make_broker(settings)
        await broker.connect()
        await declare_topology(broker, settings)
        for name in (ingest, baseline):
            queue = await broker.declare_queue(event_queue(settings, name, "#"))
            await queue.bind(settings.exchange, routing_key="#")
        await broker.stop()
        connection = await aio_pika.connect(AMQP)
        channel = await connection.channel(publisher_confirms=True)

        print(
            f"audit ingest vs raw consume+ack: {args.events} events of ~"
            f"{len(json.dumps(incident_event(0)))} bytes per round, prefetch {audit_defaults.consumer_prefetch}, "
            f"batch {audit_defaults.audit_batch_size} / {audit_defaults.audit_batch_wait_ms:g} ms, "
            f"{os.cpu_count()} cores shared with PostgreSQL and RabbitMQ",
            flush=True,
        )
        stored = 0
        ratios = []
        for round_no in range(1, args.rounds + 1):
            events = [incident_event(n) for n in range(args.events)]
            bodies = [(e["id"], json.dumps(e).encode()) for e in events]
            await fill(channel, settings.exchange, bodies)
            raw = await raw_rate(AMQP, baseline, args.events, audit_defaults.consumer_prefetch)
            audit, batches = await audit_rate(db, env, stored, args.events)
            stored += args.events
            await fill(channel, "", bodies, key=baseline)  # the baseline queue alone, straight to it
            grouped = await raw_rate(AMQP, baseline, args.events, audit_defaults.consumer_prefetch, 250)
            ratios.append(audit / raw)
            print(
                f"round {round_no}: raw consume+ack {raw:8.0f} msg/s (acks of 250: {grouped:6.0f})   audit ingest "
                f"{audit:8.0f} events/s ({batches} batches, {args.events / batches:.0f} per batch)   "
                f"ratio {audit / raw:.2f}",
                flush=True,
            )
        # Live: the service running while four producers publish as fast as confirms allow.
        process = start_audit(env, 18905)
        try:
            await wait_ready(18905, process)
            events = [incident_event(n) for n in range(args.events)]
            bodies = [(e["id"], json.dumps(e).encode()) for e in events]
            began = time.perf_counter()
            await asyncio.gather(*(fill(channel, settings.exchange, bodies[i::4]) for i in range(4)))
            published = time.perf_counter()
            await wait_count(db, stored + args.events)
            done = time.perf_counter()
            stored += args.events
            print(
                f"live: 4 producers published {args.events / (published - began):8.0f} events/s; the audit service "
                f"had stored all {args.events} {done - published:.2f} s after the last publish",
                flush=True,
            )
        finally:
            stop(process)
        best, worst = max(ratios), min(ratios)
        verdict = "met" if worst >= TARGET else "MISSED"
        print(f"ratio audit/raw: worst {worst:.2f}, best {best:.2f}; target >= {TARGET}: {verdict}")
        conn = await asyncpg.connect(asyncpg_dsn(db.admin_url))
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT event_id) AS ids, max(seq) AS top FROM audit.audit_event"
            )
            print(f"stored {row['n']} records, {row['ids']} distinct ids, max seq {row['top']} (gap-free, once each)")
        finally:
            await conn.close()
    finally:
        if connection is not None:
            await connection.close()
        await remove_topology(AMQP, names["exchange"], names["dead_letter_exchange"], (ingest, baseline))
        await drop_database(db)


if __name__ == "__main__":
    asyncio.run(main())
