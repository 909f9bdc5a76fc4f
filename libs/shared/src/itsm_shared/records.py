"""The one write path of the records with a history (incidents, problems, changes; ARCHITECTURE.md rule 3).

A service describes its record once (`Records`: its table, history table, event names) and then loads by id or
number with `load`, and saves what a use case did with `record`: the version bumped, `updated_at` set, one
history row per changed field and the CloudEvents appended to the outbox, all in the caller's transaction
(the seam commits). Written once, so that it can be made fast once."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy import BigInteger, ColumnElement, DateTime, Identity, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from itsm_shared import outbox
from itsm_shared.db import driver_connection
from itsm_shared.errors import NotFound
from itsm_shared.events import new_event
from itsm_shared.json_body import json_text
from itsm_shared.schemas import HistoryRead


class HistoryRow(SQLModel):
    """The columns of every `<record>_history` table: `{at, actor_id, field, old, new}` per changed field. A table
    adds the foreign key to its record and names it in `owner`."""

    owner: ClassVar[str]

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger, sa_column_args=[Identity()])
    at: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),
        sa_column_kwargs={"server_default": func.now(), "nullable": False},
    )
    actor_id: str = Field(sa_type=String(64))
    field: str = Field(sa_type=String(50))
    old: Any = Field(default=None, sa_type=JSONB, nullable=True)
    new: Any = Field(default=None, sa_type=JSONB, nullable=True)


def _values(first: int, width: int, rows: int) -> str:
    return ", ".join("(" + ", ".join(f"${first + r * width + c}" for c in range(width)) + ")" for r in range(rows))


@functools.lru_cache(maxsize=256)
def _insert_sql(table: sa.Table, columns: tuple[str, ...], rows: int, returning: tuple[str, ...]) -> str:
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {_values(1, len(columns), rows)}"
    return f"{sql} RETURNING {', '.join(returning)}" if returning else sql


@functools.lru_cache(maxsize=64)
def _create_sql(
    table: sa.Table,
    columns: tuple[str, ...],
    children: tuple[tuple[sa.Table, tuple[str, ...], int], ...],
    generated: tuple[str, ...],
) -> str:
    """One statement for a create: the record (returning what the database generates), its child rows, its
    events with the generated values written into their `data`."""
    returned = ", ".join(("id", *generated))
    parts = [
        f"record AS (INSERT INTO {table.name} ({', '.join(columns)}) VALUES {_values(1, len(columns), 1)} "
        f"RETURNING {returned})"
    ]
    n = len(columns) + 1
    for i, (child, names, rows) in enumerate(children):
        parts.append(
            f"child{i} AS (INSERT INTO {child.name} ({', '.join(names)}) VALUES {_values(n, len(names), rows)})"
        )
        n += len(names) * rows
    patch = ", ".join(f"'{g}', record.{g}" for g in generated)
    payload = (
        f"jsonb_set(e.payload, '{{data}}', (e.payload -> 'data') || jsonb_build_object({patch}))"
        if generated
        else "e.payload"
    )
    parts.append(
        "appended AS (INSERT INTO outbox (id, routing_key, payload) "
        f"SELECT e.id, e.routing_key, {payload} FROM record, "
        f"unnest(${n}::uuid[], ${n + 1}::varchar[], ${n + 2}::jsonb[]) AS e(id, routing_key, payload))"
    )
    return f"WITH {', '.join(parts)} SELECT {returned} FROM record"


@functools.lru_cache(maxsize=64)
def _json_columns(table: sa.Table) -> frozenset[str]:
    return frozenset(c.name for c in table.columns if isinstance(c.type, sa.JSON))


def _params(table: sa.Table, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    json_columns = _json_columns(table)
    return [json_text(row[c]) if c in json_columns else row[c] for row in rows for c in columns]


def stored_columns(table: sa.Table) -> tuple[str, ...]:
    """The columns a statement returns: all but the computed ones (a search vector)."""
    return tuple(c.name for c in table.columns if c.computed is None)


async def insert(
    session: AsyncSession,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    returning: Sequence[str] = (),
) -> list[Mapping[str, Any]]:
    """INSERT `rows` (all with the same keys) in one statement in the session's transaction, returning the
    `returning` columns of each: the write path's inserts, without ORM objects or a flush."""
    if not rows:
        return []
    columns = tuple(rows[0])
    sql = _insert_sql(table, columns, len(rows), tuple(returning))
    connection = await driver_connection(session)
    if returning:
        return list(await connection.fetch(sql, *_params(table, columns, rows)))
    await connection.execute(sql, *_params(table, columns, rows))
    return []


class Identified(Protocol):
    @property
    def id(self) -> uuid.UUID: ...

    @property
    def version(self) -> int: ...


class Versioned(Protocol):
    id: uuid.UUID
    version: int
    updated_at: datetime | None


R = TypeVar("R", bound=Versioned)
Changes = Mapping[str, Sequence[Any]]  # field -> (old, new), JSON values


@dataclass(frozen=True)
class Event:
    """One CloudEvent a use case publishes about its record: `<entity>.<action>`, with the record's data plus
    `extra`, and the field changes it reports (`changes`)."""

    action: str
    changes: Changes | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Records(Generic[R]):
    service: str  # the event source, /itsm/<service>
    entity: str  # the event type's entity: itsm.<entity>.<action>
    model: type[R]
    history_table: type[HistoryRow] | None  # None: versioned and published, without history rows
    noun: str  # for "no such <noun>"
    # The data of events another service consumes goes through the one definition both sides share.
    contracts: Mapping[str, type[BaseModel]] = field(default_factory=dict)

    async def load(
        self,
        session: AsyncSession,
        ref: str | uuid.UUID,
        *,
        for_update: bool = False,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> R:
        """The record by id or by number (`INC0000001`, any case) that also meets `where`; else 404. Locked
        (`FOR UPDATE`) when asked, and then re-read even if the session already holds it."""
        table: Any = self.model
        stmt = select(table).where(*where)
        try:
            stmt = stmt.where(table.id == (ref if isinstance(ref, uuid.UUID) else uuid.UUID(ref)))
        except ValueError:
            if not hasattr(table, "number"):
                raise NotFound(f"no such {self.noun}") from None
            stmt = stmt.where(table.number == str(ref).upper())
        if for_update:
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        found: R | None = (await session.exec(stmt)).first()
        if found is None:
            raise NotFound(f"no such {self.noun}")
        return found

    async def create(
        self,
        session: AsyncSession,
        values: Mapping[str, Any],
        *,
        children: Sequence[tuple[sa.Table, Sequence[Mapping[str, Any]]]] = (),
        events: Sequence[dict[str, Any]],
        generated: Sequence[str] = (),
        last: bool = False,
    ) -> Mapping[str, Any]:
        """Create a record in one statement: its row (`values`, with its id), its `children` (a table and rows
        each), and its `events` (built by `event`), into whose `data` the database's `generated` values (the
        number) are written. Returns the record's id and generated values. The caller's seam commits; `last`
        (nothing else of the transaction follows) lets a transaction of this one statement skip BEGIN and
        COMMIT (`driver_connection(sole=True)`)."""
        table: sa.Table = self.model.__table__  # type: ignore[attr-defined]
        columns = tuple(values)
        shapes = tuple((child, tuple(rows[0]), len(rows)) for child, rows in children if rows)
        params = _params(table, columns, [values])
        for child, rows in children:
            if rows:
                params += _params(child, tuple(rows[0]), rows)
        params += [
            [uuid.UUID(str(e["id"])) for e in events],
            [outbox.routing_key(e["type"]) for e in events],
            [json.dumps(e, allow_nan=False) for e in events],
        ]
        connection = await driver_connection(session, sole=last)
        created: Mapping[str, Any] = await connection.fetchrow(
            _create_sql(table, columns, shapes, tuple(generated)), *params
        )
        outbox.written(session)
        return created

    async def history(self, session: AsyncSession, row: R) -> list[HistoryRead]:
        """Every field change of `row`, oldest first: `{at, actor_id, field, old, new}`."""
        if self.history_table is None:
            return []
        history: Any = self.history_table
        stmt = select(history).where(getattr(history, history.owner) == row.id).order_by(history.id)
        return [HistoryRead.model_validate(h, from_attributes=True) for h in (await session.exec(stmt)).all()]

    def event(
        self, row: Identified, action: str, data: Mapping[str, Any], actor: str, changes: Changes | None = None
    ) -> dict[str, Any]:
        """The `<entity>.<action>` CloudEvent about `row` (sequence: its version)."""
        if (contract := self.contracts.get(action)) is not None:
            data = contract.model_validate(data).model_dump(mode="json")
        return new_event(
            service=self.service,
            type=f"{self.entity}.{action}",
            subject=row.id,
            data=dict(data),
            actor=actor,
            sequence=row.version,
            changes=dict(changes) if changes is not None else None,
        )

    async def emit(
        self,
        session: AsyncSession,
        row: R,
        action: str,
        data: Mapping[str, Any],
        actor: str,
        changes: Changes | None = None,
    ) -> None:
        """Append one `<entity>.<action>` event about `row` to the outbox."""
        await outbox.append(session, self.event(row, action, data, actor, changes))

    async def record(
        self,
        session: AsyncSession,
        row: R,
        *,
        actor: str,
        now: datetime,
        fields: Changes,
        events: Sequence[Event],
        data: Callable[[R], Mapping[str, Any]],
        bump: bool = True,
    ) -> None:
        """Save what one use case did to `row`: bump its version and `updated_at` (unless `bump` is false: a
        create), write a history row per entry of `fields`, and append `events`, each with `data(row)` (taken
        once, after the bump) plus the event's extra. The caller's transaction seam commits."""
        if bump:
            row.version += 1
            row.updated_at = now
        session.add(row)
        if self.history_table is not None:
            for name, (old, new) in fields.items():
                entry = self.history_table(actor_id=actor, field=name, old=old, new=new, at=now)
                setattr(entry, self.history_table.owner, row.id)
                session.add(entry)
        if not events:
            return
        payload = data(row)
        await outbox.append(
            session, *(self.event(row, e.action, {**payload, **e.extra}, actor, e.changes) for e in events)
        )
