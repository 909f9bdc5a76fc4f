"""ETag / If-Match and Idempotency-Key (CONTRACT §2)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Header, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from itsm_shared.errors import Conflict, Invalid, PreconditionFailed
from itsm_shared.models import IdempotencyRecord

IDEMPOTENCY_TTL = timedelta(hours=24)
IDEMPOTENCY_HEADER = "Idempotency-Key"
IdempotencyKey = Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)]


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
    """The transaction seam of a create (CONTRACT §2 Idempotency-Key). `begin` replays the first response or
    reserves the key in the open transaction; the use case then writes without committing; `complete` commits
    the rows, their events and the response to replay, all at once."""

    session: AsyncSession
    principal: str
    key: str | None
    body: Any
    record: IdempotencyRecord | None = None

    @property
    def request_hash(self) -> str:
        return hashlib.sha256(json.dumps(jsonable_encoder(self.body), sort_keys=True).encode()).hexdigest()

    async def begin(self) -> JSONResponse | None:
        if self.key is None:
            return None
        if not 1 <= len(self.key) <= 200:
            raise Invalid(
                "Idempotency-Key must be 1 to 200 characters",
                errors=[{"loc": ["header", IDEMPOTENCY_HEADER], "msg": "length 1..200"}],
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

    async def complete(self, status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
        """Commit the create, its events and the remembered response together."""
        encoded = jsonable_encoder(body)
        if self.record is not None:
            self.record.status_code = status
            self.record.body = encoded
            self.session.add(self.record)
        await self.session.commit()
        return JSONResponse(encoded, status_code=status, headers=headers)

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

    def _replay(self, record: IdempotencyRecord) -> JSONResponse:
        if record.request_hash != self.request_hash:
            raise Invalid(
                "this Idempotency-Key was used with a different request body",
                errors=[{"loc": ["header", IDEMPOTENCY_HEADER], "msg": "key reused with another body"}],
            )
        if record.status_code is None:
            raise Conflict("a request with this Idempotency-Key is in flight; retry")
        return JSONResponse(record.body, status_code=record.status_code, headers={"Idempotent-Replayed": "true"})


class _Created(Protocol):
    @property
    def id(self) -> Any: ...

    @property
    def version(self) -> int: ...


C = TypeVar("C", bound=_Created)


async def create_once(
    session: AsyncSession,
    principal: str,
    key: str | None,
    body: Any,
    create: Callable[[], Awaitable[C]],
    *,
    location: str,
) -> JSONResponse:
    """A `POST` that creates, as CONTRACT §2 wants it: 201 with ETag and Location, replayed for a repeated
    Idempotency-Key. `create` writes without committing; the commit covers the record, its events and the
    remembered response."""
    idem = IdempotentRequest(session, principal, key, body)
    if replay := await idem.begin():
        return replay
    created = await create()
    return await idem.complete(
        201, created, headers={"ETag": etag(created.version), "Location": f"{location}/{created.id}"}
    )
