"""The CloudEvents 1.0 envelope of CONTRACT §8 (structured JSON mode)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from itsm_shared.logs import current_correlation_id

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
SYSTEM_ACTOR = "system"

D = TypeVar("D")


class CloudEvent(BaseModel, Generic[D]):
    """What consumers receive. Unknown extension attributes are kept, not refused."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"]
    id: uuid.UUID
    source: str = Field(min_length=1)
    type: str = Field(pattern=r"^itsm\.[a-z_]+\.[a-z_]+$")
    subject: str | None = None
    time: datetime
    datacontenttype: str = "application/json"
    data: D
    actorid: str = SYSTEM_ACTOR
    correlationid: str | None = None
    sequence: int | None = None

    @property
    def routing_key(self) -> str:
        return routing_key(self.type)


def routing_key(event_type: str) -> str:
    return event_type.removeprefix("itsm.")


def new_event(
    *,
    service: str,
    type: str,
    subject: str | uuid.UUID | None,
    data: dict[str, Any],
    actor: str | uuid.UUID = SYSTEM_ACTOR,
    sequence: int | None = None,
    changes: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """Build the envelope a producer appends to its outbox. `data` must already be JSON-ready."""
    if not type.startswith("itsm."):
        type = f"itsm.{type}"
    body = dict(data)
    if changes is not None:
        body["changes"] = {k: list(v) for k, v in changes.items()}
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"/itsm/{service}",
        "type": type,
        "subject": str(subject) if subject is not None else None,
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json",
        "data": body,
        "actorid": str(actor),
        "correlationid": current_correlation_id(),
    }
    if sequence is not None:
        event["sequence"] = sequence
    if event["subject"] is None:
        del event["subject"]
    return event
