"""CONTRACT §7 over HTTP: who may read, the filters and keyset pages, the NDJSON export (verified here as a third
party would: the chain with the standard library, the anchors with the published public key), verify, and
replay (only to the services' consumer queues)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from itsm_shared.testing_fixtures import Actor

from .conftest import AmqpAs, event, publish, wait_stored

EVENTS = "/api/v1/audit/events"


async def published_and_stored(
    amqp_as: AmqpAs,
    names: dict[str, Any],
    superuser: asyncpg.Connection,
    events: list[dict[str, Any]],
) -> None:
    await publish(amqp_as, names, events)
    await wait_stored(superuser, [e["id"] for e in events])


@pytest.fixture
async def trio(amqp_as: AmqpAs, names: dict[str, Any], superuser: asyncpg.Connection) -> list[dict[str, Any]]:
    """Three events about one subject, by one actor, in one correlation, oldest first."""
    subject, actor, correlation = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    events = []
    for kind in ("incident.created", "incident.updated", "problem.created"):
        e = event(kind, subject=subject)
        e |= {"actorid": actor, "correlationid": correlation}
        events.append(e)
    for e in events:  # one by one: three batches, three distinct moments
        await published_and_stored(amqp_as, names, superuser, [e])
    return events


# ---------------------------------------------------------------- who may read


@pytest.mark.parametrize("path", [EVENTS, "/api/v1/audit/verify", "/api/v1/audit/export", "/api/v1/audit/anchor-keys"])
async def test_only_auditors_and_admins_read(client: httpx.AsyncClient, actor: Callable[..., Actor], path: str) -> None:
    assert (await client.get(path)).status_code == 401
    for role in ("agent", "requester", "problem_manager", "change_manager", "cab_member"):
        response = await client.get(path, headers=actor(role).headers)
        assert response.status_code == 403, role
        assert response.headers["content-type"] == "application/problem+json"
    for role in ("auditor", "admin"):
        assert (await client.get(path, headers=actor(role).headers)).status_code == 200, role


# ---------------------------------------------------------------- listing


async def test_items_are_the_whole_cloudevent_plus_the_log_fields(
    client: httpx.AsyncClient, auditor: Actor, trio: list[dict[str, Any]]
) -> None:
    response = await client.get(EVENTS, headers=auditor.headers, params={"subject": trio[0]["subject"]})
    assert response.status_code == 200
    items = response.json()["items"]
    assert [i["id"] for i in items] == [e["id"] for e in reversed(trio)]  # newest first
    for item, sent in zip(items, reversed(trio), strict=True):
        assert {k: item[k] for k in sent} == sent
        assert set(item) - set(sent) == {"seq", "received_at", "hash", "prev_hash"}
        assert datetime.fromisoformat(item["received_at"]).tzinfo is not None
    assert items[0]["seq"] > items[1]["seq"] > items[2]["seq"]
    one = await client.get(f"{EVENTS}/{trio[1]['id']}", headers=auditor.headers)
    assert one.status_code == 200 and one.json() == items[1]
    assert (await client.get(f"{EVENTS}/{uuid.uuid4()}", headers=auditor.headers)).status_code == 404


@pytest.mark.parametrize(
    ("type_filter", "expected"),
    [
        ("incident.*", [1, 0]),
        ("itsm.incident.*", [1, 0]),
        ("incident.created", [0]),
        ("itsm.problem.created", [2]),
        ("problem.*", [2]),
        ("*", [2, 1, 0]),
        ("incident.deleted", []),
    ],
)
async def test_type_filter_exact_or_prefix(
    client: httpx.AsyncClient, auditor: Actor, trio: list[dict[str, Any]], type_filter: str, expected: list[int]
) -> None:
    params = {"subject": trio[0]["subject"], "type": type_filter}
    items = (await client.get(EVENTS, headers=auditor.headers, params=params)).json()["items"]
    assert [i["id"] for i in items] == [trio[n]["id"] for n in expected]


async def test_actor_correlation_and_time_filters(
    client: httpx.AsyncClient, auditor: Actor, trio: list[dict[str, Any]]
) -> None:
    async def ids(**params: Any) -> list[str]:
        response = await client.get(EVENTS, headers=auditor.headers, params=params)
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["items"]]

    newest_first = [e["id"] for e in reversed(trio)]
    assert await ids(actor=trio[0]["actorid"]) == newest_first
    assert await ids(correlation_id=trio[0]["correlationid"]) == newest_first
    assert await ids(actor=str(uuid.uuid4())) == []
    middle = (await client.get(f"{EVENTS}/{trio[1]['id']}", headers=auditor.headers)).json()["received_at"]
    last = (await client.get(f"{EVENTS}/{trio[2]['id']}", headers=auditor.headers)).json()["received_at"]
    subject = trio[0]["subject"]
    assert await ids(subject=subject, since=middle) == newest_first[:2]  # since is inclusive
    assert await ids(subject=subject, until=middle) == newest_first[2:]  # until is exclusive
    assert await ids(subject=subject, since=middle, until=last) == [trio[1]["id"]]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await ids(subject=subject, since=future) == []


async def test_keyset_pages_newest_first(client: httpx.AsyncClient, auditor: Actor, trio: list[dict[str, Any]]) -> None:
    params: dict[str, Any] = {"subject": trio[0]["subject"], "limit": 2}
    first = (await client.get(EVENTS, headers=auditor.headers, params=params)).json()
    assert [i["id"] for i in first["items"]] == [trio[2]["id"], trio[1]["id"]] and first["next_cursor"]
    second = (
        await client.get(EVENTS, headers=auditor.headers, params={**params, "cursor": first["next_cursor"]})
    ).json()
    assert [i["id"] for i in second["items"]] == [trio[0]["id"]] and second["next_cursor"] is None
    oldest_first = (await client.get(EVENTS, headers=auditor.headers, params={**params, "sort": "seq"})).json()
    assert [i["id"] for i in oldest_first["items"]] == [trio[0]["id"], trio[1]["id"]]


@pytest.mark.parametrize(
    "params",
    [
        {"type": "incident.%"},
        {"limit": 0},
        {"limit": 201},
        {"cursor": "garbage"},
        {"since": "2026-01-01T00:00:00"},  # no offset
        {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        {"sort": "time"},
    ],
)
async def test_bad_queries_are_422_problems(client: httpx.AsyncClient, auditor: Actor, params: dict[str, Any]) -> None:
    response = await client.get(EVENTS, headers=auditor.headers, params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


# ---------------------------------------------------------------- export and verify


def verify_export(lines: list[dict[str, Any]], public_keys: dict[str, str]) -> None:
    """A third party's check of an export, from the README's recipe alone: the chain, then the anchors with the
    public keys pinned from GET /anchor-keys."""
    for before, line in zip([None, *lines], lines, strict=False):
        record = {k: line[k] for k in ("seq", "event_id", "received_at", "event")}
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256((line["prev_hash"] + canonical).encode()).hexdigest() == line["hash"], line["seq"]
        if before is not None:
            assert line["seq"] == before["seq"] + 1 and line["prev_hash"] == before["hash"]
    covered = None  # the seq the next anchor must start at
    for line in lines:
        if "anchor" not in line:
            continue
        anchor = line["anchor"]
        key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(public_keys[anchor["kid"]] + "=="))
        signed = f"itsm-audit-anchor:{anchor['from_seq']}:{line['seq']}:{line['hash']}".encode()
        key.verify(base64.urlsafe_b64decode(anchor["signature"] + "=="), signed)  # raises InvalidSignature
        assert anchor["from_seq"] == covered if covered is not None else anchor["from_seq"] <= lines[0]["seq"]
        covered = line["seq"] + 1
    assert covered == lines[-1]["seq"] + 1, "the export ends on an anchored record"


async def test_export_streams_a_time_range_that_verifies_on_its_own(
    client: httpx.AsyncClient, auditor: Actor, trio: list[dict[str, Any]]
) -> None:
    first = (await client.get(f"{EVENTS}/{trio[0]['id']}", headers=auditor.headers)).json()
    last = (await client.get(f"{EVENTS}/{trio[2]['id']}", headers=auditor.headers)).json()
    params = {"since": first["received_at"], "until": (datetime.now(UTC) + timedelta(seconds=1)).isoformat()}
    async with client.stream("GET", "/api/v1/audit/export", headers=auditor.headers, params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert lines[0]["seq"] == first["seq"] and lines[-1]["seq"] >= last["seq"]
    assert [line["event"]["id"] for line in lines if line["event_id"] in {e["id"] for e in trio}] == [
        e["id"] for e in trio
    ]
    assert lines[0]["prev_hash"] == first["prev_hash"]
    keys = (await client.get("/api/v1/audit/anchor-keys", headers=auditor.headers)).json()
    assert [k["current"] for k in keys] == [True] and len(base64.urlsafe_b64decode(keys[0]["public_key"] + "=")) == 32
    verify_export(lines, {k["kid"]: k["public_key"] for k in keys})
    empty = await client.get(
        "/api/v1/audit/export",
        headers=auditor.headers,
        params={"since": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
    )
    assert empty.status_code == 200 and empty.text == ""


async def test_verify_answers_ok_checked_and_first_bad_seq(
    client: httpx.AsyncClient, auditor: Actor, trio: list[dict[str, Any]]
) -> None:
    full = await client.get("/api/v1/audit/verify", headers=auditor.headers, params={"full": "true"})
    assert full.status_code == 200
    body = full.json()
    assert body["ok"] is True and body["first_bad_seq"] is None and body["checked"] == body["last_seq"] >= 3
    again = (await client.get("/api/v1/audit/verify", headers=auditor.headers)).json()
    assert again["ok"] is True and again["checked"] == 0 and again["from_seq"] == body["last_seq"] + 1


# ---------------------------------------------------------------- replay


@pytest.fixture
async def consumer_queue(amqp: aio_pika.abc.AbstractRobustConnection, names: dict[str, Any]) -> Any:
    """problem's consumer queue of this session (ITSM_QUEUE_PREFIX + problem.incidents): a replay target."""
    channel = await amqp.channel()
    queue = await channel.declare_queue(f"{names['queue_prefix']}problem.incidents", durable=True)
    yield queue
    await channel.queue_delete(queue.name)
    await channel.close()


async def drain(queue: Any, at_least: int = 0) -> list[aio_pika.abc.AbstractIncomingMessage]:
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    for _ in range(100):
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            got.append(message)
        if len(got) >= at_least:
            break
        await asyncio.sleep(0.05)
    return got


async def test_replay_republishes_a_range_with_the_original_ids(
    client: httpx.AsyncClient,
    admin: Actor,
    amqp: aio_pika.abc.AbstractRobustConnection,
    amqp_as: AmqpAs,
    names: dict[str, Any],
    superuser: asyncpg.Connection,
    consumer_queue: Any,
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    kind = "replay" + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:8])  # an entity of its own
    wanted = [event(f"{kind}.created"), event(f"{kind}.updated"), event(f"{kind}.deleted")]
    await published_and_stored(amqp_as, names, superuser, [wanted[0], event("incident.created"), *wanted[1:]])
    body = {"queue": "problem.incidents", "type": f"{kind}.*", "since": since.isoformat()}
    response = await client.post("/api/v1/audit/replay", headers=admin.headers, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["published"] == 3 and response.json()["queue"] == "problem.incidents"
    got = await drain(consumer_queue, 3)
    assert [m.message_id for m in got] == [e["id"] for e in wanted]  # in log order
    assert [json.loads(m.body) for m in got] == wanted
    assert {m.content_type for m in got} == {"application/cloudevents+json"}
    assert {m.delivery_mode for m in got} == {aio_pika.DeliveryMode.PERSISTENT}
    assert [m.type for m in got] == [e["type"] for e in wanted]


async def test_replay_is_for_admins_and_needs_an_existing_queue(
    client: httpx.AsyncClient, admin: Actor, auditor: Actor
) -> None:
    body = {"queue": "incident.problem-linked"}  # a consumer queue this session has not declared
    assert (await client.post("/api/v1/audit/replay", headers=auditor.headers, json=body)).status_code == 403
    missing = await client.post("/api/v1/audit/replay", headers=admin.headers, json=body)
    assert missing.status_code == 422 and "does not exist" in missing.json()["detail"]
    bad_type = await client.post("/api/v1/audit/replay", headers=admin.headers, json={**body, "type": "x.%"})
    assert bad_type.status_code == 422
    extra = await client.post("/api/v1/audit/replay", headers=admin.headers, json={**body, "seq": 1})
    assert extra.status_code == 422


@pytest.mark.parametrize("queue", ["ª§", "problem.incidents§", "Problem.incidents", "problem", "a.b.c", "", " " * 3])
async def test_replay_refuses_a_queue_name_that_is_no_queue_name(
    client: httpx.AsyncClient, admin: Actor, queue: str
) -> None:
    """Issue #11, finding 11 (found by schemathesis): a non-ASCII queue name was a 500."""
    response = await client.post("/api/v1/audit/replay", headers=admin.headers, json={"queue": queue})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_replay_goes_only_to_the_services_consumer_queues(
    client: httpx.AsyncClient,
    admin: Actor,
    amqp: aio_pika.abc.AbstractRobustConnection,
    amqp_as: AmqpAs,
    names: dict[str, Any],
    superuser: asyncpg.Connection,
) -> None:
    """Issue #11, finding 11: replay published the stored events to any queue it was given, so an admin token
    could feed the whole log (logins included) into a queue of anyone's choosing, or events of any type into a
    queue whose consumer trusts what it gets. Now only the consumer queues of the table are targets."""
    await published_and_stored(amqp_as, names, superuser, [event("incident.created")])
    channel = await amqp.channel()
    sink = await channel.declare_queue(f"sink{uuid.uuid4().hex[:8]}.events", durable=True)  # anyone's queue
    try:
        for queue in (sink.name, "audit.ingest", "auth.events"):
            response = await client.post("/api/v1/audit/replay", headers=admin.headers, json={"queue": queue})
            assert response.status_code == 422, (queue, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert "not a consumer queue" in response.json()["detail"]
        await asyncio.sleep(0.2)
        assert (await channel.declare_queue(sink.name, passive=True)).declaration_result.message_count == 0
    finally:
        await channel.queue_delete(sink.name)
        await channel.close()
