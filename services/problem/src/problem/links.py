"""Incident links: manual and automatic (an open known error with the same configuration item and category),
and the incident read model they rest on, kept from `incident.*` events."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from itsm_shared.auth import Principal
from itsm_shared.batches import APPLIED, Rejected, RetryBatch
from itsm_shared.errors import Conflict, Invalid, NotFound
from itsm_shared.events import SYSTEM_ACTOR, CloudEvent
from itsm_shared.inbox import PermanentError
from itsm_shared.logs import correlation_id
from itsm_shared.records import Event
from itsm_shared.trust import sequence_refusal
from sqlalchemy import Uuid, any_, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from problem.models import OPEN_STATUSES, PROBLEMS, IncidentRef, Problem, ProblemIncident
from problem.schemas import LinkedIncident
from problem.service import FINAL, LINKERS, data, require, utcnow

NOT_AN_INCIDENT = frozenset({"itsm.incident.note_added"})
READ_MODEL_FIELDS = ("number", "title", "status", "priority", "category", "configuration_item", "caller_id")
_EARLIEST = datetime.min.replace(tzinfo=UTC)


async def linked_incidents(session: AsyncSession, problem: Problem) -> list[LinkedIncident]:
    stmt = (
        select(ProblemIncident, IncidentRef)
        .join(IncidentRef, col(IncidentRef.id) == col(ProblemIncident.incident_id), isouter=True)
        .where(ProblemIncident.problem_id == problem.id)
        .order_by(col(ProblemIncident.linked_at))
    )
    return [
        LinkedIncident(
            incident_id=link.incident_id,
            number=ref.number if ref else None,
            title=ref.title if ref else None,
            status=ref.status if ref else None,
            priority=ref.priority if ref else None,
            automatic=link.automatic,
            linked_by=link.linked_by,
            linked_at=link.linked_at or utcnow(),
        )
        for link, ref in (await session.exec(stmt)).all()
    ]


async def _link(
    session: AsyncSession,
    problem: Problem,
    incident_id: uuid.UUID,
    number: str | None,
    actor: str,
    *,
    automatic: bool,
) -> None:
    now = utcnow()
    session.add(
        ProblemIncident(
            problem_id=problem.id, incident_id=incident_id, automatic=automatic, linked_by=actor, linked_at=now
        )
    )
    extra = {"incident_id": str(incident_id), "incident_number": number, "automatic": automatic}
    await _record_link(session, problem, actor, now, [None, str(incident_id)], Event("incident_linked", extra=extra))


async def _record_link(
    session: AsyncSession, problem: Problem, actor: str, now: datetime, change: list[Any], event: Event
) -> None:
    await PROBLEMS.record(
        session, problem, actor=actor, now=now, fields={"incident_link": change}, events=[event], data=data
    )


async def link_incident(
    session: AsyncSession, problem: Problem, incident_id: uuid.UUID, actor: Principal
) -> LinkedIncident:
    require(actor, LINKERS, "linking incidents")
    if problem.status in FINAL:
        raise Conflict(f"a {problem.status} problem takes no new incidents")
    incident = await session.get(IncidentRef, incident_id)
    if incident is None or incident.deleted:
        raise Invalid("no such incident", errors=[{"loc": ["body", "incident_id"], "msg": "unknown incident"}])
    existing = (
        await session.exec(select(ProblemIncident).where(ProblemIncident.incident_id == incident_id).with_for_update())
    ).first()
    if existing is not None:
        if existing.problem_id != problem.id:
            raise Conflict(f"the incident is already linked to problem {existing.problem_id}; unlink it there first")
    else:
        await _link(session, problem, incident.id, incident.number, actor.actor, automatic=False)
        await session.flush()
    return next(i for i in await linked_incidents(session, problem) if i.incident_id == incident_id)


async def unlink_incident(session: AsyncSession, problem: Problem, incident_id: uuid.UUID, actor: Principal) -> None:
    require(actor, LINKERS, "unlinking incidents")
    link = await session.get(ProblemIncident, (problem.id, incident_id), with_for_update=True)
    if link is None:
        raise NotFound("the incident is not linked to this problem")
    await session.delete(link)
    event = Event("incident_unlinked", extra={"incident_id": str(incident_id)})
    await _record_link(session, problem, actor.actor, utcnow(), [str(incident_id), None], event)


# ---------------------------------------------------------------- from the incident service's events

CREATED = "itsm.incident.created"
DELETED = "itsm.incident.deleted"
TEXT_FIELDS = ("number", "title", "status", "category", "configuration_item")

_LOCK_REFS = text(
    "SELECT id, sequence, deleted FROM incident_ref WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR UPDATE"
)
_UPSERT_REFS = text(
    """
    INSERT INTO incident_ref
        (id, number, title, status, priority, category, configuration_item, caller_id, deleted, sequence, updated_at)
    SELECT r.*, CAST(:now AS timestamptz)
    FROM unnest(CAST(:id AS uuid[]), CAST(:number AS text[]), CAST(:title AS text[]), CAST(:status AS text[]),
                CAST(:priority AS smallint[]), CAST(:category AS text[]), CAST(:configuration_item AS text[]),
                CAST(:caller_id AS uuid[]), CAST(:deleted AS boolean[]), CAST(:sequence AS bigint[]))
         AS r(id, number, title, status, priority, category, configuration_item, caller_id, deleted, sequence)
    ON CONFLICT (id) DO UPDATE SET
        number = EXCLUDED.number, title = EXCLUDED.title, status = EXCLUDED.status, priority = EXCLUDED.priority,
        category = EXCLUDED.category, configuration_item = EXCLUDED.configuration_item,
        caller_id = EXCLUDED.caller_id, deleted = EXCLUDED.deleted, sequence = EXCLUDED.sequence,
        updated_at = EXCLUDED.updated_at
    RETURNING id, xmax = 0 AS inserted
    """
)


# The auto-link's two queries, each with array parameters: one statement (prepared once) whatever the batch's size.
_LINKED = select(ProblemIncident.incident_id).where(
    col(ProblemIncident.incident_id) == any_(bindparam("ids", type_=ARRAY(Uuid())))
)
_CANDIDATES = (
    select(Problem)
    .where(
        col(Problem.known_error),
        col(Problem.status).in_(OPEN_STATUSES),
        text(
            "(problem.configuration_item, problem.category) IN "
            "(SELECT * FROM unnest(CAST(:items AS text[]), CAST(:categories AS text[])))"
        ),
    )
    .order_by(col(Problem.id))
    .with_for_update()
)


@dataclass(slots=True)
class _Ref:
    """An incident's read-model row while a batch is folded in: `values` are the fields of the last event
    applied (None: none was, the row stays as stored)."""

    sequence: int
    deleted: bool
    values: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class _Created:
    incident_id: uuid.UUID
    event: CloudEvent[dict[str, Any]]
    values: dict[str, Any]


def _incident(event: CloudEvent[dict[str, Any]]) -> tuple[uuid.UUID, dict[str, Any]]:
    """The incident's id and read-model fields from an event; PermanentError when they cannot be stored."""
    try:
        incident_id = uuid.UUID(str(event.data["id"]))
        values = {f: event.data.get(f) for f in READ_MODEL_FIELDS}
        if values["caller_id"] is not None:
            values["caller_id"] = uuid.UUID(str(values["caller_id"]))
    except ValueError as exc:
        raise PermanentError(f"not an incident: {exc}") from exc
    for name in TEXT_FIELDS:
        if values[name] is not None and not isinstance(values[name], str):
            raise PermanentError(f"not an incident: {name} is not a string")
    priority = values["priority"]
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise PermanentError("not an incident: priority is not an integer")
    return incident_id, values


async def on_incident_events(session: AsyncSession, events: Sequence[CloudEvent[dict[str, Any]]]) -> list[object]:
    """A batch of `incident.*` events, new to this consumer, in arrival order, with the effect of applying each in
    turn: the incident read model upserted in one statement (an event older than what is stored is ignored,
    `deleted` sticks once set, one more than MAX_SEQUENCE_GAP ahead of it is rejected), then the new incidents
    linked to matching open known errors: each one whose created event is in the batch, even behind its later
    events, as it was created."""
    outcomes: list[object] = [APPLIED] * len(events)
    incidents: list[tuple[int, uuid.UUID, dict[str, Any], CloudEvent[dict[str, Any]]]] = []
    for n, event in enumerate(events):
        # note_added carries the note, not the incident: nothing for the read model.
        if event.type in NOT_AN_INCIDENT or "id" not in event.data:
            continue
        try:
            incident_id, values = _incident(event)
        except PermanentError as exc:
            outcomes[n] = Rejected(f"{type(exc).__name__}: {exc}")
            continue
        incidents.append((n, incident_id, values, event))
    if not incidents:
        return outcomes
    ids = sorted({incident_id for _, incident_id, _, _ in incidents})
    stored = {row.id: _Ref(row.sequence, row.deleted) for row in await session.execute(_LOCK_REFS, {"ids": ids})}
    refs = dict(stored)
    # The incidents whose created event this batch brings (applied, or older than the read model's row): new ones.
    created: dict[uuid.UUID, _Created] = {}
    for n, incident_id, values, event in incidents:
        sequence = event.sequence or 0
        ref = refs.get(incident_id)
        if ref is not None and ref.sequence >= sequence and event.type != DELETED:
            if event.type == CREATED:
                # An incident's later events can arrive before its created event (each incident replica relays
                # its own outbox rows): older than the read model, it is still a new incident to link.
                created.setdefault(incident_id, _Created(incident_id, event, values))
            continue  # older than what is applied already
        if (refused := sequence_refusal(sequence, None if ref is None else ref.sequence)) is not None:
            outcomes[n] = Rejected(f"incident {incident_id}: {refused}")  # it would hide every later event
            continue
        refs[incident_id] = _Ref(
            sequence=sequence if ref is None else max(ref.sequence, sequence),
            deleted=(ref is not None and ref.deleted) or event.type == DELETED,
            values=values,
        )
        if event.type == CREATED:
            created.setdefault(incident_id, _Created(incident_id, event, values))
    await _upsert(session, refs, stored)
    # Each linked as it was created, unless it was deleted meanwhile.
    await _auto_link(session, [c for c in created.values() if not refs[c.incident_id].deleted])
    return outcomes


async def _upsert(session: AsyncSession, refs: dict[uuid.UUID, _Ref], stored: dict[uuid.UUID, _Ref]) -> None:
    applied = {incident_id: ref.values for incident_id, ref in refs.items() if ref.values is not None}
    if not applied:
        return
    changed = sorted(applied)  # in id order: concurrent batches lock rows in one order
    columns: dict[str, list[Any]] = {"id": changed}
    for name in READ_MODEL_FIELDS:
        columns[name] = [applied[i][name] for i in changed]
    columns["deleted"] = [refs[i].deleted for i in changed]
    columns["sequence"] = [refs[i].sequence for i in changed]
    written = await session.execute(_UPSERT_REFS, {**columns, "now": utcnow()})
    if any(not row.inserted for row in written if row.id not in stored):
        # Another consumer inserted an incident this batch read as absent: fold the batch again onto its row.
        raise RetryBatch("incident_ref rows appeared while the batch was applied")


def _preferred(candidates: Sequence[Problem]) -> dict[tuple[str | None, str | None], Problem]:
    """Per (configuration item, category), the known error a new incident links to: ORDER BY known_error_at DESC
    (NULLs first, as PostgreSQL sorts them), id."""
    ranked = sorted(candidates, key=lambda p: p.id)
    ranked.sort(key=lambda p: (p.known_error_at is None, p.known_error_at or _EARLIEST), reverse=True)
    best: dict[tuple[str | None, str | None], Problem] = {}
    for problem in ranked:
        best.setdefault((problem.configuration_item, problem.category), problem)
    return best


async def _auto_link(session: AsyncSession, created: Sequence[_Created]) -> None:
    """Link each new incident to the open known error with the same configuration item and category: one query
    for the batch's candidates (locked), then, when there are some, one for the incidents linked already. Most
    batches match no known error: their linking is one statement, not two (of a batch's five, BEGIN and COMMIT
    aside)."""
    wanted = [c for c in created if c.values["configuration_item"] and c.values["category"]]
    if not wanted:
        return
    pairs = sorted({(c.values["configuration_item"], c.values["category"]) for c in wanted})
    items, categories = [item for item, _ in pairs], [category for _, category in pairs]
    candidates = (await session.exec(_CANDIDATES.params(items=items, categories=categories))).all()
    if not candidates:
        return
    best = _preferred(candidates)
    linked = set((await session.exec(_LINKED.params(ids=[c.incident_id for c in wanted]))).all())
    for c in wanted:
        problem = best.get((c.values["configuration_item"], c.values["category"]))
        if problem is None or c.incident_id in linked:
            continue
        token = correlation_id.set(c.event.correlationid)  # the link's events carry the incident event's
        try:
            await _link(session, problem, c.incident_id, c.values["number"], SYSTEM_ACTOR, automatic=True)
        finally:
            correlation_id.reset(token)
        linked.add(c.incident_id)
