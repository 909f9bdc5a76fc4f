"""Issue #11, finding 2, at the problem service: its incident read model (and so linking, and auto-linking to
known errors) believed any `incident.*` event on the exchange, and a huge `sequence` froze an incident's row for
good. Now only the incident service's broker user is believed (the rest is parked), and an event more than
MAX_SEQUENCE_GAP ahead of the row is rejected. Real broker (users created by the session), real database."""

from __future__ import annotations

import json
from typing import Any

import aio_pika
from fastapi import FastAPI
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, new_event
from itsm_shared.testing import eventually
from itsm_shared.trust import MAX_SEQUENCE_GAP

from .conftest import incident_data, publish_incident_event
from .test_consumers import ref_row


async def dead_letters(amqp: Any, queue: str, want: set[str]) -> dict[str, str]:
    """The parked messages of `want` (message ids) with their reasons, taken off `<queue>.dlq`."""
    channel = await amqp.channel()
    found: dict[str, str] = {}
    try:
        dlq = await channel.declare_queue(f"{queue}.dlq", passive=True)

        async def all_there() -> bool:
            while (message := await dlq.get(fail=False, no_ack=True)) is not None:
                if message.message_id in want:
                    found[str(message.message_id)] = str((message.headers or {})["x-itsm-error"])
            return want <= set(found)

        await eventually(all_there, what=f"{len(want)} parked messages")
    finally:
        await channel.close()
    return found


async def test_a_forged_incident_event_never_reaches_the_read_model(
    app: FastAPI, amqp: Any, as_incident: Any, names: dict[str, Any]
) -> None:
    forged = incident_data(title="Planted to be linked")
    event = new_event(service="incident", type="incident.created", subject=forged["id"], data=forged, sequence=1)
    channel = await amqp.channel(publisher_confirms=True)  # the broker's admin: no user_id it could prove
    exchange = await channel.get_exchange(names["exchange"])
    body = json.dumps(event).encode()
    await exchange.publish(
        aio_pika.Message(body, message_id=event["id"], content_type=CLOUDEVENTS_CONTENT_TYPE),
        routing_key="incident.created",
    )
    await channel.close()
    genuine = incident_data()
    await publish_incident_event(as_incident, names, "created", genuine, sequence=1)
    assert await eventually(lambda: ref_row(app, genuine["id"]))
    reasons = await dead_letters(amqp, f"{names['queue_prefix']}problem.incidents", {event["id"]})
    assert reasons[event["id"]].startswith("untrusted: no user_id")
    assert await ref_row(app, forged["id"]) is None


async def test_a_sequence_far_ahead_is_rejected_and_freezes_nothing(
    app: FastAPI, amqp: Any, as_incident: Any, names: dict[str, Any]
) -> None:
    incident = incident_data()
    await publish_incident_event(as_incident, names, "created", incident, sequence=1)
    assert await eventually(lambda: ref_row(app, incident["id"]))
    frozen = {**incident, "title": "frozen forever"}
    huge = await publish_incident_event(as_incident, names, "updated", frozen, sequence=2 + MAX_SEQUENCE_GAP)
    later = {**incident, "title": "the next edit"}
    await publish_incident_event(as_incident, names, "updated", later, sequence=2)
    row = await eventually(lambda: ref_row(app, incident["id"]), lambda r: r.title == "the next edit")
    assert row.sequence == 2
    reasons = await dead_letters(amqp, f"{names['queue_prefix']}problem.incidents", {huge})
    assert "more than 1000 ahead of the highest applied (1)" in reasons[huge]
