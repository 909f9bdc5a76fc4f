"""Response bodies encoded by itsm_shared.json_body read as pydantic (FastAPI) would render them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

import orjson
from asyncpg.pgproto import pgproto
from itsm_shared.json_body import dumps
from pydantic import BaseModel
from pydantic_core import to_json


class Colour(StrEnum):
    RED = "red"


class Thing(BaseModel):
    id: uuid.UUID
    at: datetime
    colour: Colour
    took: timedelta


def test_values_encode_as_pydantic_does() -> None:
    values = [
        datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=UTC),
        datetime(2026, 11, 30, tzinfo=UTC),
        datetime(2026, 11, 30, tzinfo=timezone(timedelta(hours=2))),
        uuid.uuid4(),
        Colour.RED,
        0.0,
        1e-7,
        "é\u2028",
        timedelta(hours=1),
        Thing(id=uuid.uuid4(), at=datetime.now(UTC), colour=Colour.RED, took=timedelta(seconds=90)),
    ]
    for value in values:
        assert dumps(value) == to_json(value), value


def test_asyncpg_uuids_encode_as_strings() -> None:
    # What a row's UUID columns hold: a subclass orjson does not encode by itself.
    value = uuid.uuid4()
    row_value = pgproto.UUID(str(value))
    assert orjson.loads(dumps({"id": row_value, "ids": [row_value]})) == {"id": str(value), "ids": [str(value)]}
