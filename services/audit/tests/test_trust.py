"""Issue #11, finding 2, at the audit log: anyone who could publish on the exchange wrote any `source` and
`actorid` into the append-only log. Now an event is stored only when the broker user that published it (the
`user_id` RabbitMQ validated) is the broker user of the service its `source` names, and that service publishes
events of its type; anything else is parked. Real broker (users created by the session), real database."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aio_pika
import asyncpg
from fastapi import FastAPI
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, new_event
from itsm_shared.testing import eventually

from .conftest import AmqpAs, publish, stored, wait_stored
from .test_consumers import header, parked

ADMIN = str(uuid.uuid4())  # the actor a forger would like the log to blame


def user_created(source: str = "auth") -> dict[str, Any]:
    made = new_event(
        service=source, type="auth.user_created", subject=uuid.uuid4(), data={"username": "mallory"}, actor=ADMIN
    )
    made["sequence"] = 1
    return made


async def send(
    connection: aio_pika.abc.AbstractRobustConnection, exchange: str, event: dict[str, Any], key: str
) -> None:
    channel = await connection.channel(publisher_confirms=True)
    try:
        target = await channel.get_exchange(exchange)
        user = connection.url.user if connection.url.user != "guest" else None
        message = aio_pika.Message(
            json.dumps(event).encode(), message_id=event["id"], content_type=CLOUDEVENTS_CONTENT_TYPE, user_id=user
        )
        await target.publish(message, routing_key=key)
    finally:
        await channel.close()


async def test_only_the_service_a_source_names_writes_events_of_it_into_the_log(
    app: FastAPI,
    amqp: aio_pika.abc.AbstractRobustConnection,
    amqp_as: AmqpAs,
    names: dict[str, Any],
    superuser: asyncpg.Connection,
    ingest_queue: str,
) -> None:
    await parked(amqp, ingest_queue)  # start from an empty dead-letter queue
    incident = await amqp_as("incident")
    anonymous = user_created()  # any client of the broker, with no user_id it could prove
    await send(amqp, names["exchange"], anonymous, "auth.user_created")
    impostor = user_created()  # the incident service's user, claiming to be auth, on one of its own keys
    await send(incident, names["exchange"], impostor, "incident.created")
    mislabelled = user_created(source="incident")  # its own source, another service's type
    await send(incident, names["exchange"], mislabelled, "incident.created")
    genuine = user_created()
    await publish(amqp_as, names, [genuine])
    await wait_stored(superuser, [genuine["id"]])
    row = await superuser.fetchrow(
        "SELECT source, actor FROM audit_event WHERE event_id = $1", uuid.UUID(genuine["id"])
    )
    assert row is not None and (row["source"], row["actor"]) == ("/itsm/auth", ADMIN)

    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    forged = {anonymous["id"], impostor["id"], mislabelled["id"]}

    async def all_parked() -> bool:
        got.extend(m for m in await parked(amqp, ingest_queue) if json.loads(m.body)["id"] in forged)
        return len(got) >= len(forged)

    await eventually(all_parked, timeout=15, what="the forged events parked")
    reasons = {json.loads(m.body)["id"]: header(m, "x-itsm-error") for m in got}
    assert reasons[anonymous["id"]].startswith("untrusted: no user_id")
    assert "published by broker user" in reasons[impostor["id"]]
    assert "published with routing key 'incident.created'" in reasons[mislabelled["id"]]
    assert await stored(superuser, list(forged)) == {}
