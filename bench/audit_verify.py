"""Benchmark: walking the audit hash chain over 1,000,000 records, in full and incrementally.

A scratch database gets the audit service's real migrations. N records are built with the service's own
chain functions (`audit.chain`: canonical JSON, SHA-256 over the previous hash) from CloudEvents shaped like
the services' (an `incident.updated` with a compact incident in `data`), with an anchor signed per 250 records
(`audit.anchors`, as the writer signs each batch), and copied in as the service's login role (COPY needs only
INSERT, which is all it has besides SELECT). Then, with the service's code (`audit.verify.verify_chain`, chunked
keyset reads, hashing and checking the anchors off the event loop), as the service's role:

1. full: `verify_chain(full=True)` re-hashes all N records and appends a checkpoint at the end;
2. incremental, nothing new: `verify_chain()` starts from that checkpoint and checks nothing;
3. incremental after 1,000 new events stored through the real ingest path (`store_batch`, 4 batches).

It prints time, records checked and records per second for each, and removes the scratch database at the
end, also on failure or Ctrl-C.

    uv run python bench/audit_verify.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from itsm_shared.db import asyncpg_dsn, make_engine, session_factory, transaction
from itsm_shared.events import new_event
from itsm_shared.provision import app_url
from itsm_shared.testing import create_database, drop_database, migrate

warnings.filterwarnings("ignore", message=r"(?s).*You probably want to use .session.exec")

SERVER = os.environ.get("ITSM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
COLUMNS = (
    "seq",
    "event_id",
    "type",
    "source",
    "subject",
    "actor",
    "correlation_id",
    "time",
    "received_at",
    "event",
    "prev_hash",
    "hash",
)
START = datetime(2026, 1, 1, tzinfo=UTC)
# Records per anchor: the ingest's default batch size.
BATCH = 250


def an_event(n: int) -> dict[str, Any]:
    incident = uuid.uuid4()
    return new_event(
        service="incident",
        type="incident.updated",
        subject=incident,
        actor=uuid.uuid4(),
        sequence=n % 7 + 1,
        data={
            "id": str(incident),
            "number": f"INC{n:07d}",
            "title": "Printer on floor 3 jams on every second page",
            "status": "in_progress",
            "priority": 3,
            "assignment_group": "workplace",
            "version": n % 7 + 1,
        },
        changes={"status": ["new", "in_progress"]},
    )


def build(first_seq: int, count: int, prev: str) -> tuple[list[tuple[Any, ...]], str]:
    from audit.chain import canonical_json, format_received_at, record_hash

    records = []
    for seq in range(first_seq, first_seq + count):
        event = an_event(seq)
        received_at = START + timedelta(milliseconds=seq)
        digest = record_hash(prev, seq, event["id"], format_received_at(received_at), canonical_json(event))
        records.append(
            (
                seq,
                uuid.UUID(event["id"]),
                event["type"],
                event["source"],
                event["subject"],
                event["actorid"],
                event["correlationid"],
                datetime.fromisoformat(event["time"]),
                received_at,
                json.dumps(event),
                prev,
                digest,
            )
        )
        prev = digest
    return records, prev


async def load(dsn: str, total: int) -> None:
    """N records, and an anchor per BATCH of them signed with the service's anchor key, as the writer leaves them."""
    from audit.anchors import anchor_keys
    from audit.chain import GENESIS

    keys = anchor_keys()
    conn = await asyncpg.connect(dsn)
    try:
        prev, seq, chunk = GENESIS, 1, 20000
        started = time.perf_counter()
        while seq <= total:
            count = min(chunk, total - seq + 1)
            records, prev = build(seq, count, prev)
            await conn.copy_records_to_table("audit_event", records=records, columns=COLUMNS, schema_name="audit")
            anchors = []
            for first in range(0, count, BATCH):
                last = records[min(first + BATCH, count) - 1]
                signed = keys.sign(records[first][0], last[0], last[-1])
                anchors.append((signed.seq, signed.from_seq, signed.kid, signed.signature))
            await conn.copy_records_to_table(
                "audit_anchor", records=anchors, columns=("seq", "from_seq", "kid", "signature"), schema_name="audit"
            )
            seq += count
            if (seq - 1) % 200000 == 0:
                print(f"  loaded {seq - 1:>9,} records ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()

    # The anchor key the service would be given (verify checks every anchor with it).
    os.environ.setdefault("ITSM_AUDIT_ANCHOR_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
    db = await create_database(SERVER, "itsm_bench_audit")
    try:
        result = migrate("audit", db.admin_url)
        if result.returncode != 0:
            raise SystemExit(f"migration failed:\n{result.stderr}")
        from audit.config import AuditSettings
        from audit.ingest import parse_incoming, store_batch
        from audit.verify import verify_chain

        role_url = app_url(db.admin_url, "audit")
        chunk = AuditSettings().audit_verify_chunk
        print(f"audit verify: {args.records:,} records, chunks of {chunk}, {os.cpu_count()} cores", flush=True)
        started = time.perf_counter()
        await load(asyncpg_dsn(role_url), args.records)
        admin = await asyncpg.connect(asyncpg_dsn(db.admin_url))
        try:
            await admin.execute("VACUUM ANALYZE audit.audit_event")
            size = await admin.fetchval("SELECT pg_size_pretty(pg_total_relation_size('audit.audit_event'))")
        finally:
            await admin.close()
        print(f"loaded and analysed in {time.perf_counter() - started:.0f} s ({size} with indexes)", flush=True)

        engine = make_engine(role_url, pool_size=4)
        sessions = session_factory(engine)
        try:

            async def timed(label: str, full: bool) -> None:
                began = time.perf_counter()
                outcome = await verify_chain(sessions, full=full, chunk=chunk)
                seconds = time.perf_counter() - began
                rate = f"{outcome.checked / seconds:>9,.0f} records/s" if outcome.checked else ""
                print(
                    f"{label:<34} {seconds:8.3f} s   ok={outcome.ok}  checked={outcome.checked:>9,}  {rate}",
                    flush=True,
                )
                if not outcome.ok:
                    raise SystemExit(f"the chain did not verify: {outcome}")

            await timed("full walk", True)
            await timed("incremental, nothing new", False)
            for _ in range(4):
                batch = [parse_incoming(json.dumps(an_event(n)).encode()) for n in range(250)]
                async with transaction(sessions) as session:
                    await store_batch(session, batch)
            await timed("incremental, 1,000 new records", False)
        finally:
            await engine.dispose()
    finally:
        await drop_database(db)


if __name__ == "__main__":
    asyncio.run(main())
