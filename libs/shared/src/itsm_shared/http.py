"""ETag / If-Match and Idempotency-Key (CONTRACT §2)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import Header, Request, Response
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from itsm_shared.errors import Conflict, Invalid, PreconditionFailed
from itsm_shared.json_body import json_response
from itsm_shared.models import IdempotencyRecord

IDEMPOTENCY_TTL = timedelta(hours=24)
IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX = 200
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX,
        description="a key unique to this create (a UUID, say): a retry with the same key and body is answered "
        "like the first request, without creating twice; the same key with another body is 422 (kept 24 hours)",
    ),
]


def etag(version: int) -> str:
    return f'"{version}"'


def check_if_match(request: Request, version: int) -> None:
    """Honour If-Match when the client sends it: 412 unless it names the current version."""
    header = request.headers.get("If-Match")
    if header is None:
        return
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    if "*" not in tags and etag(version) not in tags:
        raise PreconditionFailed(f"the resource is at version {version}; reload it and retry")


def with_etag(response: Response, version: int) -> None:
    response.headers["ETag"] = etag(version)


@dataclass
class IdempotentRequest:
    """Idempotency-Key of a create (CONTRACT §2). `begin` replays the first response or reserves the key in the
    open transaction; the use case then writes; `complete` adds the response to replay, and the request's
    transaction seam commits the rows, their events and that response together."""

    session: AsyncSession
    principal: str
    key: str | None
    body: Any
    record: IdempotencyRecord | None = None
    # Where created resources live (`create_once`'s `location`): a replay carries the first answer's Location too.
    location: str | None = None

    @property
    def request_hash(self) -> str:
        return hashlib.sha256(json.dumps(jsonable_encoder(self.body), sort_keys=True).encode()).hexdigest()

    async def begin(self) -> Response | None:
        if self.key is None:
            return None
        if not 1 <= len(self.key) <= IDEMPOTENCY_KEY_MAX:
            raise Invalid(
                f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters",
                errors=[{"loc": ["header", IDEMPOTENCY_HEADER], "msg": f"length 1..{IDEMPOTENCY_KEY_MAX}"}],
            )
        existing = await self._load()
        if existing is not None:
            return self._replay(existing)
        self.record = IdempotencyRecord(principal=self.principal, key=self.key, request_hash=self.request_hash)
        self.session.add(self.record)
        try:
            await self.session.flush()  # waits on a concurrent holder of the same key until it commits
        except IntegrityError:
            await self.session.rollback()
            existing = await self._load()
            if existing is None:
                raise Conflict("a request with this Idempotency-Key is in flight; retry") from None
            return self._replay(existing)
        return None

    async def complete(self, status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
        """Remember the response for replays, in the create's transaction."""
        if self.record is not None:
            encoded = body.model_dump(mode="json") if isinstance(body, BaseModel) else to_jsonable_python(body)
            self.record.status_code = status
            self.record.body = encoded
            self.session.add(self.record)
        return json_response(body, status_code=status, headers=headers)

    async def _load(self) -> IdempotencyRecord | None:
        cutoff = datetime.now(UTC) - IDEMPOTENCY_TTL
        await self.session.execute(
            delete(IdempotencyRecord).where(
                col(IdempotencyRecord.principal) == self.principal,
                col(IdempotencyRecord.key) == self.key,
                col(IdempotencyRecord.created_at) < cutoff,
            )
        )
        result = await self.session.execute(
            select(IdempotencyRecord).where(
                col(IdempotencyRecord.principal) == self.principal,
                col(IdempotencyRecord.key) == self.key,
            )
        )
        return result.scalar_one_or_none()

    def _replay(self, record: IdempotencyRecord) -> Response:
        if record.request_hash != self.request_hash:
            raise Invalid(
                "this Idempotency-Key was used with a different request body",
                errors=[{"loc": ["header", IDEMPOTENCY_HEADER], "msg": "key reused with another body"}],
            )
        if record.status_code is None:
            raise Conflict("a request with this Idempotency-Key is in flight; retry")
        headers = {"Idempotent-Replayed": "true"}
        if record.status_code == 201 and isinstance(record.body, dict):
            # The headers of the first answer, from what it created (created_headers), which the record holds.
            version = record.body.get("version")
            location = self.location if record.body.get("id") is not None else None
            headers |= created_headers(record.body, location, version if isinstance(version, int) else None)
        return json_response(record.body, status_code=record.status_code, headers=headers)


T = TypeVar("T")


def field_of(created: Any, name: str) -> Any:
    """A created resource's field: a model's attribute or a plain mapping's value (a create shown as values)."""
    return created.get(name) if isinstance(created, Mapping) else getattr(created, name, None)


def created_headers(created: Any, location: str | None, version: int | None) -> dict[str, str]:
    headers = {}
    if version is not None:
        headers["ETag"] = etag(version)
    if location is not None:
        headers["Location"] = f"{location}/{field_of(created, 'id')}"
    return headers


async def create_once(
    session: AsyncSession,
    principal: str,
    key: str | None,
    request: Any,
    create: Callable[[], Awaitable[T]],
    *,
    location: str | None = None,
    version: Callable[[T], int | None] = lambda created: field_of(created, "version"),
) -> Response:
    """Every creating `POST` (CONTRACT §2): 201, with the ETag of `version(created)` and, given `location`, the
    Location of the new resource; replayed for a repeated Idempotency-Key with the same `request`. `create`
    writes; the request's transaction seam commits the record, its events and the remembered response."""
    idem = IdempotentRequest(session, principal, key, request, location=location)
    if replay := await idem.begin():
        return replay
    created = await create()
    return await idem.complete(201, created, headers=created_headers(created, location, version(created)))
