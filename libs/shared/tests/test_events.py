"""The CloudEvents envelope (CONTRACT §8), as built and as it actually leaves through the relay."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_json
from itsm_shared.events import CLOUDEVENTS_CONTENT_TYPE, CloudEvent, new_event, routing_key
from itsm_shared.logs import correlation_id
from itsm_shared.relay import OutboxRelay
from itsm_shared.settings import ServiceSettings
from itsm_shared.testing import Listen
from itsm_shared.testing_events import CONTRACT_ATTRIBUTES
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .support import SERVICE, append_committed


def test_new_event_has_every_contract_attribute() -> None:
    entity, actor = uuid.uuid4(), uuid.uuid4()
    token = correlation_id.set("corr-123")
    try:
        event = new_event(
            service="incident",
            type="incident.updated",
            subject=entity,
            data={"id": str(entity), "priority": "P2"},
            actor=actor,
            sequence=4,
            changes={"priority": ("P3", "P2")},
        )
    finally:
        correlation_id.reset(token)

    assert set(event) == set(CONTRACT_ATTRIBUTES)
    assert event["specversion"] == "1.0"
    assert uuid.UUID(event["id"]).version == 4
    assert event["source"] == "/itsm/incident"
    assert event["type"] == "itsm.incident.updated"
    assert event["subject"] == str(entity)
    when = datetime.fromisoformat(event["time"])
    assert when.tzinfo is not None
    assert abs(datetime.now(UTC) - when) < timedelta(seconds=5)
    assert event["datacontenttype"] == "application/json"
    assert event["data"] == {"id": str(entity), "priority": "P2", "changes": {"priority": ["P3", "P2"]}}
    assert event["actorid"] == str(actor)
    assert event["correlationid"] == "corr-123"
    assert event["sequence"] == 4
    json.dumps(event)  # JSON-ready as it stands, the outbox stores it as JSONB
    # What consumers validate against accepts it as it is.
    parsed = CloudEvent[dict[str, Any]].model_validate(event)
    assert parsed.routing_key == "incident.updated"


def test_new_event_defaults() -> None:
    event = new_event(service="problem", type="itsm.problem.created", subject=None, data={})
    assert event["type"] == "itsm.problem.created"  # not prefixed twice
    assert "subject" not in event  # absent rather than null
    assert "sequence" not in event
    assert event["actorid"] == "system"
    assert uuid.UUID(event["correlationid"])  # work that starts on its own gets a fresh correlation id
    other = new_event(service="problem", type="problem.created", subject=None, data={})
    assert other["id"] != event["id"]
    assert other["correlationid"] != event["correlationid"]
    assert routing_key("itsm.change.status_changed") == "change.status_changed"


async def test_relay_publishes_a_cloudevent_the_official_sdk_parses(
    clean_outbox: None,
    sessions: async_sessionmaker[AsyncSession],
    listen: Listen,
    relays: Callable[..., OutboxRelay],
    settings: ServiceSettings,
) -> None:
    listener = await listen("envelope.*")
    entity, actor = uuid.uuid4(), uuid.uuid4()
    event = new_event(
        service=SERVICE,
        type="envelope.status_changed",
        subject=entity,
        data={"id": str(entity), "status": "resolved"},
        actor=actor,
        sequence=7,
        changes={"status": ["open", "resolved"]},
    )
    await append_committed(sessions, event)
    relays()

    await listener.wait(count=1)
    (message,) = listener.messages
    body = message.body

    # The legacy v1 API of the official SDK.
    ce = from_json(body)
    assert ce["id"] == event["id"]
    assert ce["type"] == "itsm.envelope.status_changed"
    assert ce["source"] == f"/itsm/{SERVICE}"
    assert ce["subject"] == str(entity)
    assert ce["specversion"] == "1.0"
    assert ce["actorid"] == str(actor)
    assert ce["correlationid"] == event["correlationid"]
    assert ce["sequence"] == 7
    assert ce.data == {"id": str(entity), "status": "resolved", "changes": {"status": ["open", "resolved"]}}

    # The core API validates attribute names and types strictly (extension names [a-z0-9]+, aware time...).
    core = JSONFormat().read(None, body)
    assert core.get_id() == event["id"]
    assert core.get_type() == "itsm.envelope.status_changed"
    assert core.get_source() == f"/itsm/{SERVICE}"
    assert core.get_subject() == str(entity)
    assert core.get_datacontenttype() == "application/json"
    assert core.get_time() == datetime.fromisoformat(event["time"])
    assert core.get_extension("actorid") == str(actor)
    assert core.get_extension("correlationid") == event["correlationid"]
    assert core.get_extension("sequence") == 7

    # The AMQP side of CONTRACT §8.
    assert message.message_id == event["id"]
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == CLOUDEVENTS_CONTENT_TYPE
    assert message.routing_key == "envelope.status_changed"
    assert message.exchange == settings.exchange
    assert message.correlation_id == event["correlationid"]
    assert message.type == "itsm.envelope.status_changed"
    assert json.loads(body) == event  # the exact envelope that was appended, nothing added or lost
