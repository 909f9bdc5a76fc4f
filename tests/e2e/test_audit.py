"""Issue #4 through the real gateway: what users do in the auth service shows up in the audit log, read by an
auditor; other roles are refused; the chain verifies; the export verifies on its own, its anchors with the
published public key. Issue #11: a consistent rewrite by the tables' owner is found (finding 15, the runner gives
the audit service its anchor key); replay goes only to the services' consumer queues (finding 11)."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from audit.anchors import AnchorKeys
from audit.chain import canonical_json, format_received_at, record_hash
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from itsm_shared.db import asyncpg_dsn
from itsm_shared.testing import eventually

from .conftest import bearer, stack_module, token

PASSWORD = "a perfectly fine password"


async def user_with(http: httpx.AsyncClient, admin: str, roles: list[str]) -> tuple[str, str]:
    """(user id, access token) of a new user with `roles`."""
    username = f"e2eaudit{uuid.uuid4().hex[:8]}"
    created = await http.post(
        "/api/v1/auth/users", headers=bearer(admin), json={"username": username, "password": PASSWORD, "roles": roles}
    )
    assert created.status_code == 201, created.text
    return created.json()["id"], (await token(http, username, PASSWORD))["access_token"]


async def audit_of(http: httpx.AsyncClient, auditor: str, timeout: float = 15, **params: Any) -> list[dict[str, Any]]:
    response = await http.get("/api/v1/audit/events", headers=bearer(auditor), params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def wait_for(
    http: httpx.AsyncClient, auditor: str, want: set[str], timeout: float = 15, **params: Any
) -> list[dict[str, Any]]:
    return await eventually(
        lambda: audit_of(http, auditor, **params),
        lambda items: want <= {i["type"] for i in items},
        timeout=timeout,
        interval=0.1,
        what=f"{sorted(want)} in the audit log",
    )


async def test_auth_actions_appear_in_the_audit_log(http: httpx.AsyncClient, admin: str) -> None:
    _, auditor = await user_with(http, admin, ["auditor"])
    user_id, _ = await user_with(http, admin, ["agent"])  # created, then logged in
    items = await wait_for(http, auditor, {"itsm.auth.user_created", "itsm.auth.login_succeeded"}, subject=user_id)
    by_type = {i["type"]: i for i in items}
    created = by_type["itsm.auth.user_created"]
    assert created["source"] == "/itsm/auth" and created["specversion"] == "1.0"
    assert created["data"]["id"] == user_id and "password_hash" not in created["data"]
    assert created["actorid"] != user_id  # the admin did it
    assert by_type["itsm.auth.login_succeeded"]["actorid"] == user_id
    assert items[0]["seq"] > items[-1]["seq"]  # newest first
    for item in items:
        assert len(item["hash"]) == 64 and len(item["prev_hash"]) == 64 and item["received_at"].endswith("Z")
    prefixed = await audit_of(http, auditor, subject=user_id, type="auth.*")
    assert {i["id"] for i in prefixed} == {i["id"] for i in items}


async def test_other_roles_are_refused(http: httpx.AsyncClient, admin: str) -> None:
    _, agent = await user_with(http, admin, ["agent"])
    for path in ("/api/v1/audit/events", "/api/v1/audit/verify", "/api/v1/audit/export"):
        response = await http.get(path, headers=bearer(agent))
        assert response.status_code == 403, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert (await http.get("/api/v1/audit/events")).status_code == 401


async def test_the_chain_verifies_and_the_export_verifies_on_its_own(http: httpx.AsyncClient, admin: str) -> None:
    _, auditor = await user_with(http, admin, ["auditor"])
    await wait_for(http, auditor, {"itsm.auth.login_succeeded"})
    full = await http.get("/api/v1/audit/verify", headers=bearer(auditor), params={"full": "true"})
    assert full.status_code == 200, full.text
    assert full.json()["ok"] is True and full.json()["first_bad_seq"] is None and full.json()["checked"] >= 2
    incremental = (await http.get("/api/v1/audit/verify", headers=bearer(auditor))).json()
    assert incremental["ok"] is True and incremental["from_seq"] == full.json()["last_seq"] + 1
    export = await http.get("/api/v1/audit/export", headers=bearer(auditor))
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert lines and lines[0]["seq"] == 1 and lines[0]["prev_hash"] == "0" * 64
    prev = "0" * 64
    for line in lines:  # the README's recipe, nothing of the service's code
        record = {k: line[k] for k in ("seq", "event_id", "received_at", "event")}
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert line["prev_hash"] == prev
        assert hashlib.sha256((prev + canonical).encode()).hexdigest() == line["hash"]
        prev = line["hash"]
    # The anchors, with the public key pinned from GET /anchor-keys: signed, and covering the chain end to end.
    keys = (await http.get("/api/v1/audit/anchor-keys", headers=bearer(auditor))).json()
    public = {
        k["kid"]: Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(k["public_key"] + "=")) for k in keys
    }
    covered = 1
    for line in lines:
        if "anchor" in line:
            anchor = line["anchor"]
            signed = f"itsm-audit-anchor:{anchor['from_seq']}:{line['seq']}:{line['hash']}".encode()
            public[anchor["kid"]].verify(base64.urlsafe_b64decode(anchor["signature"] + "=="), signed)
            assert anchor["from_seq"] == covered
            covered = line["seq"] + 1
    assert covered == lines[-1]["seq"] + 1


async def test_replay_goes_only_to_the_services_consumer_queues(http: httpx.AsyncClient, admin: str) -> None:
    """Issue #11, finding 11: a non-ASCII queue name was a 500, and any queue was a target."""
    for queue in ("ª§", "audit.ingest", "itsm.events.unrouted", "amq.rabbitmq.trace", "problem.incidents.dlq"):
        response = await http.post("/api/v1/audit/replay", headers=bearer(admin), json={"queue": queue})
        assert response.status_code == 422, (queue, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    # A consumer queue of the table: the problem service's read model takes what it has seen already as duplicates.
    response = await http.post(
        "/api/v1/audit/replay", headers=bearer(admin), json={"queue": "problem.incidents", "type": "incident.*"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["queue"] == "problem.incidents"


async def _rechain(conn: asyncpg.Connection, since: int, events: dict[int, str], keys: AnchorKeys | None) -> None:
    """As the owner of the audit tables (`conn` a superuser's): triggers off, events changed, every hash from
    `since` recomputed, the checkpoints from there dropped, triggers on; with `keys` the anchors re-signed."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('itsm.audit.chain'))")
        await conn.execute("SET LOCAL ROLE audit_owner")
        await conn.execute("SET LOCAL search_path TO audit")
        for table in ("audit_event", "audit_anchor", "audit_checkpoint"):
            await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for seq, event in events.items():
            await conn.execute("UPDATE audit_event SET event = $2::jsonb WHERE seq = $1", seq, event)
        prev = await conn.fetchval("SELECT prev_hash FROM audit_event WHERE seq = $1", since)
        hashes: dict[int, str] = {}
        query = "SELECT seq, event_id, received_at, event::text AS e FROM audit_event WHERE seq >= $1 ORDER BY seq"
        for row in await conn.fetch(query, since):
            received = format_received_at(row["received_at"])
            digest = record_hash(prev, row["seq"], str(row["event_id"]), received, canonical_json(json.loads(row["e"])))
            await conn.execute(
                "UPDATE audit_event SET prev_hash = $2, hash = $3 WHERE seq = $1", row["seq"], prev, digest
            )
            hashes[row["seq"]] = prev = digest
        await conn.execute("DELETE FROM audit_checkpoint WHERE seq >= $1", since)
        if keys is not None:
            for anchor in await conn.fetch("SELECT seq, from_seq FROM audit_anchor WHERE seq >= $1", since):
                signed = keys.sign(anchor["from_seq"], anchor["seq"], hashes[anchor["seq"]])
                await conn.execute(
                    "UPDATE audit_anchor SET kid = $2, signature = $3 WHERE seq = $1",
                    signed.seq,
                    signed.kid,
                    signed.signature,
                )
        for table in ("audit_event", "audit_anchor", "audit_checkpoint"):
            await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


def anchor_keys_of(stack: stack_module.Stack) -> AnchorKeys:
    """The audit service's anchor key, from the file the runner gives it."""
    path = Path(stack.service_env("audit")["ITSM_AUDIT_ANCHOR_KEY_FILE"])
    return AnchorKeys.of(base64.urlsafe_b64decode(path.read_text().strip()))


@pytest.mark.timeout(120)
async def test_a_consistent_rewrite_by_the_tables_owner_is_found(
    http: httpx.AsyncClient, admin: str, stack: stack_module.Stack
) -> None:
    """Issue #11, finding 15: the owner of the audit tables switches the triggers off, changes a record and
    recomputes every hash after it; the chain links as before, but the anchors (signed with a key only the audit
    process holds, from the runner) no longer match."""
    _, auditor = await user_with(http, admin, ["auditor"])
    await wait_for(http, auditor, {"itsm.auth.login_succeeded"})
    assert (await http.get("/api/v1/audit/verify", headers=bearer(auditor), params={"full": "true"})).json()["ok"]
    conn = await asyncpg.connect(asyncpg_dsn(stack.settings.database_url))
    try:
        target = await conn.fetchval("SELECT min(seq) FROM audit.audit_event WHERE type = 'itsm.auth.login_succeeded'")
        original = await conn.fetchval("SELECT event::text FROM audit.audit_event WHERE seq = $1", target)
        forged = json.loads(original) | {"actorid": str(uuid.uuid4())}
        await _rechain(conn, target, {target: json.dumps(forged)}, None)
        try:
            result = (await http.get("/api/v1/audit/verify", headers=bearer(auditor), params={"full": "true"})).json()
            assert result["ok"] is False and result["first_bad_seq"] <= target, result
            assert result["reason"] == "anchor signature does not match", result
        finally:  # put it back: only the holder of the anchor key (the runner's file) can re-sign
            await _rechain(conn, target, {target: original}, anchor_keys_of(stack))
    finally:
        await conn.close()
    assert (await http.get("/api/v1/audit/verify", headers=bearer(auditor), params={"full": "true"})).json()["ok"]
