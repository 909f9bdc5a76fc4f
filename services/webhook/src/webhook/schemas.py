from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated

from itsm_shared.schemas import AsDateTime, RequestBody
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, StrictBool

READ_ONLY = frozenset(
    {
        "id",
        "owner_id",
        "secret",
        "disabled_reason",
        "failing_since",
        "previous_secret_expires_at",
        "created_at",
        "updated_at",
        "version",
    }
)

# An event type (`itsm.incident.created`), a pattern with `*` for one part (`itsm.incident.*`, `itsm.*.created`),
# or `*` for every event.
EVENT_TYPE = re.compile(r"^\*$|^itsm\.([a-z_]+|\*)\.([a-z_]+|\*)$")


def _event_types(values: list[str]) -> list[str]:
    for value in values:
        if not EVENT_TYPE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an event type (itsm.<entity>.<action>), a pattern with * for a part "
                "(itsm.incident.*), or *"
            )
    return list(dict.fromkeys(values))


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


EventTypes = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200, pattern=EVENT_TYPE.pattern)]],
    Field(min_length=1, max_length=100),
    AfterValidator(_event_types),
]
# Only events about these subjects (entity ids); none: every subject.
Subjects = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200)]],
    Field(min_length=1, max_length=1000),
    AfterValidator(_unique),
]
Url = Annotated[str, Field(min_length=1, max_length=2048)]
Description = Annotated[str | None, Field(max_length=1000)]


class _Body(RequestBody):
    read_only = READ_ONLY


class SubscriptionCreate(_Body):
    url: Url
    event_types: EventTypes
    subjects: Subjects | None = None
    description: Description = None
    active: StrictBool = True


class SubscriptionUpdate(_Body):
    not_null = frozenset({"url", "event_types", "active"})
    url: Url | None = None
    event_types: EventTypes | None = None
    subjects: Subjects | None = None
    description: Description = None
    active: StrictBool | None = None


class SubscriptionRead(BaseModel):
    id: uuid.UUID
    owner_id: uuid.UUID
    url: str
    event_types: list[str]
    subjects: list[str] | None
    description: str | None
    active: bool
    disabled_reason: str | None
    failing_since: datetime | None
    # While a rotated-out secret still signs beside the new one.
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int


class SubscriptionCreated(SubscriptionRead):
    secret: str = Field(description="The signing secret (whsec_...), shown this once")


class SecretRotated(BaseModel):
    id: uuid.UUID
    secret: str = Field(description="The new signing secret, shown this once")
    previous_secret_expires_at: datetime = Field(description="Until then the old secret signs beside it")
    version: int


class SubscriptionEvent(BaseModel):
    """The `data` of the webhook.* events: a subscription without its secret, and its URL without path or query
    (which may hold a credential, as some chat tools' incoming-webhook URLs do)."""

    id: uuid.UUID
    owner_id: uuid.UUID
    endpoint: str
    event_types: list[str]
    subjects: list[str] | None
    description: str | None
    active: bool
    disabled_reason: str | None
    version: int


class AttemptRead(BaseModel):
    attempted_at: datetime
    status_code: int | None
    latency_ms: int
    response: str | None = Field(description="The first KiB of the answer's body")
    error: str | None


class DeliveryRead(BaseModel):
    id: uuid.UUID
    subscription_id: uuid.UUID
    event_id: uuid.UUID = Field(description="Also the webhook-id header of every attempt")
    event_type: str
    replay: bool
    status: str
    attempts: list[AttemptRead]
    next_attempt_at: datetime | None
    created_at: datetime


class ReplayRequest(RequestBody):
    since: Annotated[AwareDatetime, AsDateTime]


class ReplayRead(BaseModel):
    subscription_id: uuid.UUID
    since: datetime
    scheduled: int = Field(description="Deliveries created, one per stored event that matches")
