"""The problem service's events reach incidents (CONTRACT §5, §8): real broker, real database.

Events are published the way the problem service publishes them: CloudEvents 1.0 structured JSON built with
`new_event`, persistent, `message_id` = event id, routing key = type without `itsm.`. Effects are checked
through the HTTP API and the database; every wait polls against a deadline."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
import asyncpg
import httpx
from fastapi import FastAPI
from incident import automation
from itsm_shared.contracts import ProblemIncidentLinkEvent
from itsm_shared.inbox import handle_once
from itsm_shared.testing import EventProbe, eventually

from .conftest import LINKED, RESOLVED, Actor, Problems, create
from .router_support import get, patch

LINK_CONSUMER = "incident.problem-links"  # the inbox name of the link/unlink handler
RESOLVE_CONSUMER = "incident.problem-resolved"
SYSTEM = "system"


# ---------------------------------------------------------------- helpers


async def inbox_has(db: asyncpg.Connection, consumer: str, *events: dict[str, Any]) -> bool:
    ids = [uuid.UUID(e["id"]) for e in events]
    count = await db.fetchval(
        "SELECT count(*) FROM incident.inbox WHERE consumer = $1 AND event_id = ANY($2::uuid[])", consumer, ids
    )
    return bool(count == len(ids))


async def processed(db: asyncpg.Connection, consumer: str, *events: dict[str, Any]) -> None:
    """The inbox row commits with the effect: once it is there, the handler has run and committed."""
    await eventually(lambda: inbox_has(db, consumer, *events), bool)


async def notes_of(client: httpx.AsyncClient, who: Actor, incident_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/incidents/{incident_id}/notes", headers=who.headers)
    assert response.status_code == 200, response.text
    return list(response.json())


async def history_of(client: httpx.AsyncClient, who: Actor, incident_id: str, field: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/incidents/{incident_id}/history", headers=who.headers)
    assert response.status_code == 200, response.text
    return [h for h in response.json() if h["field"] == field]


async def parked(channel: aio_pika.abc.AbstractChannel, queue_name: str, message_id: str) -> dict[str, Any] | None:
    """Take the parked message with this id from `<queue>.dlq` (others are requeued); its headers, or None."""
    dlq = await channel.get_queue(f"{queue_name}.dlq", ensure=True)
    found: dict[str, Any] | None = None
    seen: list[aio_pika.abc.AbstractIncomingMessage] = []
    while (message := await dlq.get(fail=False, no_ack=False, timeout=5)) is not None:
        if message.message_id == message_id:
            found = dict(message.headers or {})
            await message.ack()
        else:
            seen.append(message)
    for message in seen:
        await message.nack(requeue=True)
    return found


# ---------------------------------------------------------------- link / unlink


async def test_link_sets_problem_and_workaround_note_unlink_clears_with_history_and_events(
    client: httpx.AsyncClient,
    agent: Actor,
    actor: Any,
    problems: Problems,
    probe: EventProbe,
    db: asyncpg.Connection,
) -> None:
    requester: Actor = actor("requester")
    incident = await create(client, agent, caller_id=str(requester.id), title="VPN drops every hour")
    problem = uuid.uuid4()

    link = problems.link(problem, incident["id"], sequence=3, workaround="Reconnect with the legacy profile")
    link["correlationid"] = "corr-" + uuid.uuid4().hex
    await problems.publish(link)
    linked = await eventually(lambda: get(client, agent, incident["id"]), lambda i: i["problem_id"] is not None)
    assert linked["problem_id"] == str(problem) and linked["version"] == incident["version"] + 1

    notes = await notes_of(client, agent, incident["id"])
    assert len(notes) == 1
    note = notes[0]
    assert note["visibility"] == "internal"
    assert "Reconnect with the legacy profile" in note["body"] and link["data"]["number"] in note["body"]
    assert await notes_of(client, requester, incident["id"]) == [], "a work note is not shown to the requester"

    [entry] = await history_of(client, agent, incident["id"], "problem_id")
    assert entry["old"] is None and entry["new"] == str(problem) and entry["actor_id"] == SYSTEM

    [updated] = await probe.wait(incident["id"], "updated")
    assert updated["data"]["changes"] == {"problem_id": [None, str(problem)]}
    assert updated["data"]["problem_id"] == str(problem)
    assert updated["sequence"] == linked["version"] and updated["actorid"] == SYSTEM
    assert updated["correlationid"] == link["correlationid"], "the consumed event's correlation id is carried on"
    assert updated["source"] == "/itsm/incident"

    unlink = problems.link(problem, incident["id"], sequence=4, linked=False, number=link["data"]["number"])
    await problems.publish(unlink)
    unlinked = await eventually(lambda: get(client, agent, incident["id"]), lambda i: i["problem_id"] is None)
    assert unlinked["version"] == linked["version"] + 1
    assert len(await notes_of(client, agent, incident["id"])) == 1, "an unlink adds no note"
    entries = await history_of(client, agent, incident["id"], "problem_id")
    assert [(h["old"], h["new"]) for h in entries] == [(None, str(problem)), (str(problem), None)]

    updates = await probe.wait(incident["id"], "updated", count=2)
    assert len(updates) == 2
    second = updates[1]
    assert second["data"]["changes"] == {"problem_id": [str(problem), None]}
    assert second["sequence"] == unlinked["version"]

    # The listing filter sees the link state.
    await problems.publish(problems.link(problem, incident["id"], sequence=5, workaround="again"))
    await eventually(lambda: get(client, agent, incident["id"]), lambda i: i["problem_id"] == str(problem))
    listed = await client.get(f"/api/v1/incidents?problem_id={problem}", headers=agent.headers)
    assert [i["id"] for i in listed.json()["items"]] == [incident["id"]]
    # Every note added through a link is announced like any other note (no change without its event).
    noted = await probe.wait(incident["id"], "note_added", count=2)
    assert len(noted) == 2 and {e["data"]["visibility"] for e in noted} == {"internal"}


async def test_duplicate_deliveries_have_one_effect(
    app: FastAPI,
    client: httpx.AsyncClient,
    agent: Actor,
    problems: Problems,
    channel: aio_pika.abc.AbstractChannel,
    names: dict[str, Any],
    probe: EventProbe,
    db: asyncpg.Connection,
) -> None:
    queue = names["queue_prefix"] + "incident.problem-linked"
    one = await create(client, agent, title="Printer offline on floor 3")
    two = await create(client, agent, title="Printer offline on floor 4")

    # The same event delivered three times in a row, and three times at once.
    again = problems.link(uuid.uuid4(), one["id"], sequence=2, workaround="Use the floor 2 printer")
    for _ in range(3):
        await problems.publish(again)
    at_once = problems.link(uuid.uuid4(), two["id"], sequence=2, workaround="Use the floor 5 printer")
    await asyncio.gather(*(problems.publish(at_once) for _ in range(3)))
    await processed(db, LINK_CONSUMER, again, at_once)

    for incident in (one, two):
        await eventually(lambda i=incident: get(client, agent, i["id"]), lambda i: i["problem_id"] is not None)

    # Two replicas handling the same delivery at the same moment: the inbox lets exactly one through.
    three = await create(client, agent, title="Printer offline on floor 6")
    racing = ProblemIncidentLinkEvent.model_validate(
        problems.link(uuid.uuid4(), three["id"], sequence=7, workaround="Use the floor 7 printer")
    )

    async def handle() -> bool:
        async def effect(session: Any) -> None:
            await automation.apply_problem_link(
                session,
                incident_id=racing.data.incident_id,
                problem_id=racing.data.id,
                sequence=racing.sequence or 0,
                linked=True,
                note=f"Workaround: {racing.data.workaround}",
            )

        return await handle_once(app.state.runtime.sessions, LINK_CONSUMER, racing, effect)

    outcomes = await asyncio.gather(*(handle() for _ in range(3)))
    assert sorted(outcomes) == [False, False, True]
    assert len(await notes_of(client, agent, three["id"])) == 1
    assert (await get(client, agent, three["id"]))["version"] == three["version"] + 1

    # One incident.updated per incident, whatever the number of deliveries.
    await probe.until(lambda p: all(p.of(i["id"], "updated") for i in (one, two)))
    await asyncio.sleep(0.3)  # a duplicate still in flight would show by now
    for incident in (one, two, three):
        assert len(probe.of(incident["id"], "updated")) == 1
        assert len(probe.of(incident["id"], "note_added")) == 1
    for incident, event in ((one, again), (two, at_once)):
        after = await get(client, agent, incident["id"])
        assert after["problem_id"] == event["data"]["id"] and after["version"] == incident["version"] + 1
        notes = await notes_of(client, agent, incident["id"])
        assert [n["body"].count(event["data"]["workaround"]) for n in notes] == [1]
        assert len(await history_of(client, agent, incident["id"], "problem_id")) == 1
        assert await parked(channel, queue, event["id"]) is None, "a duplicate is acked, not parked"


async def test_out_of_order_and_foreign_unlinks(
    client: httpx.AsyncClient,
    agent: Actor,
    problems: Problems,
    probe: EventProbe,
    db: asyncpg.Connection,
) -> None:
    late = await create(client, agent, title="Disk full on build agent")
    first, second = uuid.uuid4(), uuid.uuid4()

    # Unlink (sequence 4) arrives before the link it follows (sequence 3): the late link is stale.
    unlink = problems.link(first, late["id"], sequence=4, linked=False)
    await problems.publish(unlink)
    await processed(db, LINK_CONSUMER, unlink)
    link = problems.link(first, late["id"], sequence=3, workaround="Clean the workspace")
    await problems.publish(link)
    await processed(db, LINK_CONSUMER, link)
    after = await get(client, agent, late["id"])
    assert after["problem_id"] is None and after["version"] == late["version"]
    assert await notes_of(client, agent, late["id"]) == []
    assert await history_of(client, agent, late["id"], "problem_id") == []

    # A link from another problem replaces the first one.
    moved = await create(client, agent, title="SSO login loops")
    await problems.publish(problems.link(first, moved["id"], sequence=1))
    await eventually(lambda: get(client, agent, moved["id"]), lambda i: i["problem_id"] == str(first))
    await problems.publish(problems.link(second, moved["id"], sequence=1))
    replaced = await eventually(lambda: get(client, agent, moved["id"]), lambda i: i["problem_id"] == str(second))
    entries = await history_of(client, agent, moved["id"], "problem_id")
    assert [(h["old"], h["new"]) for h in entries] == [(None, str(first)), (str(first), str(second))]

    # Unlinks from problems the incident is no longer (or never was) linked to change nothing.
    stale = problems.link(first, moved["id"], sequence=2, linked=False)
    stranger = problems.link(uuid.uuid4(), moved["id"], sequence=9, linked=False)
    await problems.publish(stale)
    await problems.publish(stranger)
    await processed(db, LINK_CONSUMER, stale, stranger)
    unchanged = await get(client, agent, moved["id"])
    assert unchanged["problem_id"] == str(second) and unchanged["version"] == replaced["version"]
    assert len(await history_of(client, agent, moved["id"], "problem_id")) == 2

    moves = await probe.wait(moved["id"], "updated", count=2)
    assert probe.of(late["id"], "updated") == []
    assert [e["sequence"] for e in moves] == [
        moved["version"] + 1,
        moved["version"] + 2,
    ]


# ---------------------------------------------------------------- problem.resolved


async def test_problem_resolved_resolves_open_linked_incidents_only(
    client: httpx.AsyncClient,
    agent: Actor,
    problems: Problems,
    probe: EventProbe,
    db: asyncpg.Connection,
) -> None:
    problem = uuid.uuid4()
    new = await create(client, agent, title="Payroll export fails (new)")
    working = await create(client, agent, title="Payroll export fails (in progress)")
    await patch(client, agent, working["id"], status="in_progress")
    held = await create(client, agent, title="Payroll export fails (on hold)")
    await patch(client, agent, held["id"], status="on_hold", hold_reason="awaiting_problem")
    closed = await create(client, agent, title="Payroll export fails (closed)")
    await patch(client, agent, closed["id"], status="resolved", resolution_code="workaround", resolution_notes="ok")
    await patch(client, agent, closed["id"], status="closed")
    cancelled = await create(client, agent, title="Payroll export fails (cancelled)")
    await patch(client, agent, cancelled["id"], status="cancelled")
    everyone = (new, working, held, closed, cancelled)
    for sequence, incident in enumerate(everyone, start=1):
        await problems.publish(problems.link(problem, incident["id"], sequence=sequence))
    for incident in everyone:
        await eventually(lambda i=incident: get(client, agent, i["id"]), lambda i: i["problem_id"] == str(problem))
    before = {i["id"]: await get(client, agent, i["id"]) for i in everyone}

    # resolve_linked_incidents false first: nothing changes.
    keep = problems.event(
        RESOLVED,
        problem,
        sequence=20,
        resolve_linked_incidents=False,
        incident_ids=[i["id"] for i in everyone],
        root_cause="expired certificate",
    )
    await problems.publish(keep)
    # A second problem's true resolve on the same queue, published after: once it shows, the first was consumed.
    marker = await create(client, agent, title="Marker incident")
    other = uuid.uuid4()
    await problems.publish(problems.link(other, marker["id"], sequence=1))
    await eventually(lambda: get(client, agent, marker["id"]), lambda i: i["problem_id"] == str(other))
    flag = problems.event(RESOLVED, other, sequence=2, resolve_linked_incidents=True, incident_ids=[marker["id"]])
    await problems.publish(flag)
    await eventually(lambda: get(client, agent, marker["id"]), lambda i: i["status"] == "resolved")
    for incident in everyone:
        now = await get(client, agent, incident["id"])
        was = before[incident["id"]]
        assert (now["status"], now["version"], now["resolution_code"]) == (
            was["status"],
            was["version"],
            was["resolution_code"],
        )

    resolve = problems.event(
        RESOLVED,
        problem,
        sequence=21,
        number="PRB0000042",
        resolve_linked_incidents=True,
        incident_ids=[i["id"] for i in everyone],
        root_cause="expired certificate",
        fix="renewed the certificate",
    )
    await problems.publish(resolve)
    await processed(db, RESOLVE_CONSUMER, resolve)
    for incident in (new, working, held):
        after = await get(client, agent, incident["id"])
        assert after["status"] == "resolved" and after["resolution_code"] == "solved_by_problem"
        assert "PRB0000042" in after["resolution_notes"] and "expired certificate" in after["resolution_notes"]
        assert after["hold_reason"] is None and after["resolved_at"] is not None
        assert after["sla"]["resolution"]["state"] == "stopped"
        [entry] = await history_of(client, agent, incident["id"], "resolution_code")
        assert entry["new"] == "solved_by_problem" and entry["actor_id"] == SYSTEM
    for incident, status in ((closed, "closed"), (cancelled, "cancelled")):
        after = await get(client, agent, incident["id"])
        assert after["status"] == status and after["version"] == before[incident["id"]]["version"]
        assert after["resolution_code"] == before[incident["id"]]["resolution_code"]

    await probe.until(lambda p: all(p.of(i["id"], "status_changed") for i in (new, held)))
    for incident in (new, working, held):
        changed = [
            e for e in probe.of(incident["id"], "status_changed") if e["data"]["changes"]["status"][1] == "resolved"
        ]
        assert len(changed) == 1 and changed[0]["data"]["resolution_code"] == "solved_by_problem"
        assert changed[0]["actorid"] == SYSTEM

    # Redelivered: nothing more happens.
    versions = {i["id"]: (await get(client, agent, i["id"]))["version"] for i in everyone}
    await problems.publish(resolve)
    await asyncio.sleep(0.3)
    assert {i["id"]: (await get(client, agent, i["id"]))["version"] for i in everyone} == versions


# ---------------------------------------------------------------- poison and unknown references


async def test_malformed_message_is_parked_and_later_events_still_flow(
    client: httpx.AsyncClient,
    agent: Actor,
    problems: Problems,
    channel: aio_pika.abc.AbstractChannel,
    names: dict[str, Any],
    db: asyncpg.Connection,
) -> None:
    queue = names["queue_prefix"] + "incident.problem-linked"
    not_json = str(uuid.uuid4())
    await problems.publish_raw(b"{this is not json", LINKED, not_json)
    missing = problems.link(uuid.uuid4(), uuid.uuid4(), sequence=1)
    del missing["data"]["incident_id"]
    await problems.publish(missing)
    bad_uuid = problems.link(uuid.uuid4(), uuid.uuid4(), sequence=1)
    bad_uuid["data"]["incident_id"] = "INC0000001"
    await problems.publish(bad_uuid)

    reasons = {}
    for message_id in (not_json, missing["id"], bad_uuid["id"]):
        headers = await eventually(lambda m=message_id: parked(channel, queue, m), lambda h: h is not None)
        assert headers is not None
        assert str(headers["x-itsm-error"]).startswith("not a valid event"), headers
        assert headers["x-itsm-queue"] == queue
        reasons[message_id] = str(headers["x-itsm-error"])
    assert "data.incident_id" in reasons[missing["id"]] and "data.incident_id" in reasons[bad_uuid["id"]]

    incident = await create(client, agent, title="Wi-Fi slow in the lobby")
    good = problems.link(uuid.uuid4(), incident["id"], sequence=1, workaround="Use the guest network")
    await problems.publish(good)
    linked = await eventually(lambda: get(client, agent, incident["id"]), lambda i: i["problem_id"] is not None)
    assert linked["problem_id"] == good["data"]["id"]
    assert await parked(channel, queue, good["id"]) is None


async def test_link_to_an_unknown_incident_is_acked_and_creates_nothing(
    client: httpx.AsyncClient,
    agent: Actor,
    problems: Problems,
    channel: aio_pika.abc.AbstractChannel,
    names: dict[str, Any],
    db: asyncpg.Connection,
) -> None:
    ghost = uuid.uuid4()
    link = problems.link(uuid.uuid4(), ghost, sequence=1, workaround="Nothing to see")
    await problems.publish(link)
    await processed(db, LINK_CONSUMER, link)  # committed, hence acked
    assert (await client.get(f"/api/v1/incidents/{ghost}", headers=agent.headers)).status_code == 404
    assert await db.fetchval("SELECT count(*) FROM incident.incident WHERE id = $1", ghost) == 0
    assert await db.fetchval("SELECT count(*) FROM incident.incident_note WHERE incident_id = $1", ghost) == 0
    assert await db.fetchval("SELECT count(*) FROM incident.incident_history WHERE incident_id = $1", ghost) == 0
    assert await parked(channel, names["queue_prefix"] + "incident.problem-linked", link["id"]) is None

    # An unlink and a resolve naming it are as harmless.
    unlink = problems.link(link["data"]["id"], ghost, sequence=2, linked=False)
    resolve = problems.event(
        RESOLVED, uuid.uuid4(), sequence=3, resolve_linked_incidents=True, incident_ids=[str(ghost)]
    )
    await problems.publish(unlink)
    await problems.publish(resolve)
    await processed(db, LINK_CONSUMER, unlink)
    await processed(db, RESOLVE_CONSUMER, resolve)
    assert await db.fetchval("SELECT count(*) FROM incident.incident WHERE id = $1", ghost) == 0
    for queue in ("incident.problem-unlinked", "incident.problem-resolved"):
        assert await parked(channel, names["queue_prefix"] + queue, unlink["id"]) is None
        assert await parked(channel, names["queue_prefix"] + queue, resolve["id"]) is None
