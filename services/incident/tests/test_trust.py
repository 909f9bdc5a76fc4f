"""Issue #11, finding 2, at the incident service: a forged `problem.resolved` resolved any incidents it listed, a
forged `problem.incident_linked` wrote the attacker's text as a work note, a huge `sequence` hid every later event
of a link. Now only the problem service's broker user is believed (what anyone else publishes is parked), a
resolution resolves only the incidents linked to that problem here, and a link's sequence may run at most
MAX_SEQUENCE_GAP ahead of what was applied. Real broker (users created by the session), real database."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aio_pika
import asyncpg
import httpx
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, routing_key
from itsm_shared.testing import eventually
from itsm_shared.trust import MAX_SEQUENCE_GAP

from .conftest import RESOLVED, Actor, Problems, create
from .test_consumers import LINK_CONSUMER, get, notes_of, parked, patch, processed


async def forge(amqp: aio_pika.abc.AbstractRobustConnection, exchange: str, event: dict[str, Any]) -> None:
    """Publish as any client of the broker may (here its admin): no user_id, or none it can prove."""
    channel = await amqp.channel(publisher_confirms=True)
    try:
        target = await channel.get_exchange(exchange)
        message = aio_pika.Message(
            json.dumps(event).encode(), message_id=event["id"], content_type=CLOUDEVENTS_CONTENT_TYPE
        )
        await target.publish(message, routing_key=routing_key(event["type"]))
    finally:
        await channel.close()


async def untrusted(channel: aio_pika.abc.AbstractChannel, queue: str, event: dict[str, Any]) -> str:
    headers = await eventually(lambda: parked(channel, queue, event["id"]), lambda h: h is not None)
    assert headers is not None
    return str(headers["x-itsm-error"])


async def test_a_forged_problem_resolved_resolves_nothing(
    client: httpx.AsyncClient,
    agent: Actor,
    problems: Problems,
    amqp: aio_pika.abc.AbstractRobustConnection,
    channel: aio_pika.abc.AbstractChannel,
    names: dict[str, Any],
) -> None:
    problem = uuid.uuid4()
    incident = await create(client, agent, title="VPN drops every hour")
    await problems.publish(problems.link(problem, incident["id"], sequence=1))
    linked = await eventually(lambda: get(client, agent, incident["id"]), lambda i: i["problem_id"] == str(problem))
    forged = problems.event(RESOLVED, problem, sequence=9, resolve_linked_incidents=True, incident_ids=[incident["id"]])
    await forge(amqp, names["exchange"], forged)
    reason = await untrusted(channel, names["queue_prefix"] + "incident.problem-resolved", forged)
    assert reason.startswith("untrusted: no user_id")
    after = await get(client, agent, incident["id"])
    assert (after["status"], after["version"]) == (linked["status"], linked["version"])


async def test_problem_resolved_resolves_only_the_incidents_linked_to_that_problem(
    client: httpx.AsyncClient, agent: Actor, problems: Problems, db: asyncpg.Connection
) -> None:
    """The problem service's own user lists incidents the problem has no link to here: only the linked one is
    resolved (the event's list alone was enough before)."""
    problem, another = uuid.uuid4(), uuid.uuid4()
    linked = await create(client, agent, title="Printer offline (linked)")
    unlinked = await create(client, agent, title="Printer offline (not linked)")
    elsewhere = await create(client, agent, title="Printer offline (another problem's)")
    await patch(client, agent, unlinked["id"], status="in_progress")
    await problems.publish(problems.link(problem, linked["id"], sequence=1))
    await problems.publish(problems.link(another, elsewhere["id"], sequence=1))
    for incident, owner in ((linked, problem), (elsewhere, another)):
        await eventually(lambda i=incident: get(client, agent, i["id"]), lambda i, o=owner: i["problem_id"] == str(o))
    before = {i["id"]: await get(client, agent, i["id"]) for i in (unlinked, elsewhere)}
    everyone = [linked["id"], unlinked["id"], elsewhere["id"], str(uuid.uuid4())]
    resolve = problems.event(RESOLVED, problem, sequence=3, resolve_linked_incidents=True, incident_ids=everyone)
    await problems.publish(resolve)
    await processed(db, "incident.problem-resolved", resolve)
    assert (await get(client, agent, linked["id"]))["resolution_code"] == "solved_by_problem"
    for incident in (unlinked, elsewhere):
        after = await get(client, agent, incident["id"])
        assert (after["status"], after["version"]) == (
            before[incident["id"]]["status"],
            before[incident["id"]]["version"],
        )


async def test_a_forged_link_writes_no_work_note(
    client: httpx.AsyncClient,
    agent: Actor,
    problems: Problems,
    amqp: aio_pika.abc.AbstractRobustConnection,
    channel: aio_pika.abc.AbstractChannel,
    names: dict[str, Any],
) -> None:
    incident = await create(client, agent, title="Password reset mail never arrives")
    bait = "Workaround: send your password to helpdesk@evil.example"
    forged = problems.link(uuid.uuid4(), incident["id"], sequence=1, workaround=bait)
    await forge(amqp, names["exchange"], forged)
    reason = await untrusted(channel, names["queue_prefix"] + "incident.problem-linked", forged)
    assert reason.startswith("untrusted: no user_id")
    after = await get(client, agent, incident["id"])
    assert after["problem_id"] is None and after["version"] == incident["version"]
    assert await notes_of(client, agent, incident["id"]) == []


async def test_a_sequence_far_ahead_is_parked_and_hides_no_later_event(
    client: httpx.AsyncClient,
    agent: Actor,
    problems: Problems,
    channel: aio_pika.abc.AbstractChannel,
    names: dict[str, Any],
    db: asyncpg.Connection,
) -> None:
    queue = names["queue_prefix"] + "incident.problem-linked"
    problem = uuid.uuid4()
    incident = await create(client, agent, title="Build agents run out of disk")
    # A link nobody has seen before may not start beyond the gap either: it would hide every event of the link.
    first = problems.link(problem, incident["id"], sequence=2**62, workaround="never applied")
    await problems.publish(first)
    assert "more than 1000 ahead" in await untrusted(channel, queue, first)

    await problems.publish(problems.link(problem, incident["id"], sequence=5, workaround="clean the workspace"))
    await eventually(lambda: get(client, agent, incident["id"]), lambda i: i["problem_id"] == str(problem))
    huge = problems.link(problem, incident["id"], sequence=5 + MAX_SEQUENCE_GAP + 1, linked=False)
    await problems.publish(huge)
    assert "more than 1000 ahead of the highest applied (5)" in await untrusted(
        channel, names["queue_prefix"] + "incident.problem-unlinked", huge
    )
    unlink = problems.link(problem, incident["id"], sequence=6, linked=False)
    await problems.publish(unlink)
    await processed(db, LINK_CONSUMER, unlink)
    assert (await get(client, agent, incident["id"]))["problem_id"] is None
    # The highest applied of the problem's links bounds the first event of another link of it.
    other = await create(client, agent, title="Build agents run out of disk (2)")
    within = problems.link(problem, other["id"], sequence=6 + MAX_SEQUENCE_GAP)
    await problems.publish(within)
    await eventually(lambda: get(client, agent, other["id"]), lambda i: i["problem_id"] == str(problem))


async def test_a_work_note_from_a_link_is_plain_bounded_text(
    client: httpx.AsyncClient,
    agent: Actor,
    problems: Problems,
    channel: aio_pika.abc.AbstractChannel,
    names: dict[str, Any],
) -> None:
    incident = await create(client, agent, title="Calendar sync stalls")
    flood = problems.link(uuid.uuid4(), incident["id"], sequence=1, workaround="x" * 100_001)
    await problems.publish(flood)
    reason = await untrusted(channel, names["queue_prefix"] + "incident.problem-linked", flood)
    assert reason.startswith("not a valid event: data.workaround")
    controlled = problems.link(uuid.uuid4(), incident["id"], sequence=1, workaround="Restart\x1b[2J sync\x00 now\n")
    await problems.publish(controlled)
    notes = await eventually(lambda: notes_of(client, agent, incident["id"]), bool)
    assert [n["body"].split("Workaround: ")[1] for n in notes] == ["Restart[2J sync now"]
