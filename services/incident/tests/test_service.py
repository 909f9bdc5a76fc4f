"""Incident rules, exercised through the use cases of `incident.service` on the test database (the app's own
sessions), with the app's outbox relay publishing to the session's test exchange."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from incident import automation, queries, service
from incident.models import Incident, IncidentHistory
from incident.schemas import IncidentCreate, IncidentRead, IncidentUpdate, NoteCreate
from itsm_shared.auth import Principal
from itsm_shared.db import transaction
from itsm_shared.errors import Conflict, Invalid
from itsm_shared.testing import EventProbe
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

# CONTRACT §4 as data, written out in the tests so that a change to incident.lifecycle cannot move the goalposts.
from .router_support import ALLOWED, NEEDS, PATH, RESOLUTION, STATUSES

Sessions = async_sessionmaker[AsyncSession]


def person(*roles: str) -> Principal:
    return Principal(id=uuid.uuid4(), roles=frozenset(roles))


@pytest.fixture
def sessions(app: FastAPI) -> Sessions:
    return app.state.sessions  # type: ignore[no-any-return]


@pytest.fixture
def worker() -> Principal:
    return person("agent")


async def open_(sessions: Sessions, who: Principal, **fields: Any) -> IncidentRead:
    async with transaction(sessions) as session:
        created = await service.open_incident(
            session, IncidentCreate(**{"title": "Mail is down", "impact": 2, "urgency": 2, **fields}), who
        )
    return IncidentRead.model_validate(created)


async def patch(sessions: Sessions, ref: Any, who: Principal, **fields: Any) -> IncidentRead:
    async with transaction(sessions) as session:
        incident = await queries.visible(session, str(ref), who, for_update=True)
        return await service.update_incident(session, incident, IncidentUpdate(**fields), who)


async def comment(sessions: Sessions, ref: Any, who: Principal, body: str, visibility: str = "public") -> None:
    async with transaction(sessions) as session:
        incident = await queries.visible(session, str(ref), who, for_update=True)
        await service.add_note(session, incident, NoteCreate(body=body, visibility=visibility), who)  # type: ignore[arg-type]


async def row(sessions: Sessions, incident_id: Any) -> Incident:
    """The stored row as it is now, deleted or not, from a fresh session."""
    async with sessions() as session:
        found = await session.get(Incident, uuid.UUID(str(incident_id)))
        assert found is not None
        return found


async def history_of(sessions: Sessions, incident_id: Any) -> list[IncidentHistory]:
    async with sessions() as session:
        stmt = select(IncidentHistory).where(IncidentHistory.incident_id == uuid.UUID(str(incident_id)))
        return list((await session.exec(stmt.order_by(col(IncidentHistory.id)))).all())


async def at_status(sessions: Sessions, who: Principal, status: str, **fields: Any) -> IncidentRead:
    incident = await open_(sessions, who, **fields)
    for step in PATH[status]:
        incident = await patch(sessions, incident.id, who, **step)
    assert incident.status == status
    return incident


# ---------------------------------------------------------------- the state model


@pytest.mark.parametrize(("source", "target"), [(s, t) for s in STATUSES for t in STATUSES if s != t])
async def test_every_transition_is_allowed_or_409_with_nothing_changed(
    sessions: Sessions, worker: Principal, source: str, target: str
) -> None:
    incident = await at_status(sessions, worker, source)
    before = await history_of(sessions, incident.id)
    if target in ALLOWED[source]:
        moved = await patch(sessions, incident.id, worker, status=target, **NEEDS.get(target, {}))
        assert moved.status == target and moved.version == incident.version + 1
        stored = await row(sessions, incident.id)
        assert stored.status == target and stored.version == moved.version
        changes = [(h.field, h.old, h.new) for h in await history_of(sessions, incident.id)][len(before) :]
        assert ("status", source, target) in changes
        if target == "on_hold":
            assert stored.hold_reason == "awaiting_vendor"
        if target == "resolved":
            assert (stored.resolution_code, stored.resolution_notes) == tuple(RESOLUTION.values())
            assert stored.resolved_at is not None
        if target in ("closed", "cancelled"):
            assert stored.closed_at is not None
        if source == "on_hold":
            assert stored.hold_reason is None  # leaving the hold clears its reason
    else:
        with pytest.raises(Conflict):
            await patch(sessions, incident.id, worker, status=target, **NEEDS.get(target, {}))
        stored = await row(sessions, incident.id)
        assert (stored.status, stored.version) == (source, incident.version)
        assert len(await history_of(sessions, incident.id)) == len(before)


@pytest.mark.parametrize("status", STATUSES)
async def test_patching_the_current_status_is_not_a_transition(
    sessions: Sessions, worker: Principal, status: str
) -> None:
    incident = await at_status(sessions, worker, status)
    before = len(await history_of(sessions, incident.id))
    same = await patch(sessions, incident.id, worker, status=status)
    assert (same.status, same.version) == (status, incident.version)
    assert len(await history_of(sessions, incident.id)) == before
    stored = await row(sessions, incident.id)
    assert (stored.status, stored.version) == (status, incident.version)


@pytest.mark.parametrize(
    ("source", "fields", "missing"),
    [
        ("new", {"status": "on_hold"}, "hold_reason"),
        ("in_progress", {"status": "resolved"}, "resolution_code"),
        ("in_progress", {"status": "resolved", "resolution_code": "fixed"}, "resolution_notes"),
        ("on_hold", {"status": "resolved", "resolution_notes": "it works now"}, "resolution_code"),
        ("in_progress", {"status": "resolved", "resolution_code": "", "resolution_notes": "x"}, "resolution_code"),
    ],
)
async def test_a_transition_without_its_required_fields_is_invalid(
    sessions: Sessions, worker: Principal, source: str, fields: dict[str, Any], missing: str
) -> None:
    incident = await at_status(sessions, worker, source)
    before = len(await history_of(sessions, incident.id))
    with pytest.raises(Invalid) as raised:
        await patch(sessions, incident.id, worker, title="changed along the way", **fields)
    assert ["body", missing] in [e["loc"] for e in raised.value.extra["errors"]]
    stored = await row(sessions, incident.id)
    assert (stored.status, stored.version, stored.title) == (source, incident.version, "Mail is down")
    assert len(await history_of(sessions, incident.id)) == before


def test_an_unknown_hold_reason_is_refused_by_the_body_schema() -> None:
    with pytest.raises(ValidationError) as raised:
        IncidentUpdate(status="on_hold", hold_reason="awaiting_godot")  # type: ignore[arg-type]
    assert [e["loc"] for e in raised.value.errors()] == [("hold_reason",)]


async def test_reopen_counts_and_clears_the_resolution(sessions: Sessions, worker: Principal) -> None:
    incident = await at_status(sessions, worker, "resolved")
    assert incident.reopen_count == 0
    before = len(await history_of(sessions, incident.id))
    reopened = await patch(sessions, incident.id, worker, status="in_progress")
    assert reopened.status == "in_progress" and reopened.reopen_count == 1
    assert (reopened.resolution_code, reopened.resolution_notes, reopened.resolved_at) == (None, None, None)
    fields = {h.field: (h.old, h.new) for h in (await history_of(sessions, incident.id))[before:]}
    assert fields["status"] == ("resolved", "in_progress") and fields["reopen_count"] == (0, 1)
    assert fields["resolution_code"] == ("fixed", None) and fields["resolution_notes"] == (
        RESOLUTION["resolution_notes"],
        None,
    )
    assert fields["resolved_at"][1] is None
    await patch(sessions, incident.id, worker, status="resolved", **RESOLUTION)
    again = await patch(sessions, incident.id, worker, status="in_progress")
    assert again.reopen_count == 2


@pytest.mark.parametrize("final", ["closed", "cancelled"])
async def test_final_states_take_no_more_changes(sessions: Sessions, worker: Principal, final: str) -> None:
    incident = await at_status(sessions, worker, final)
    with pytest.raises(Conflict):
        await patch(sessions, incident.id, worker, title="one more thing")
    with pytest.raises(Conflict):
        await patch(sessions, incident.id, worker, status="on_hold", hold_reason="awaiting_caller")
    with pytest.raises(Conflict):
        await comment(sessions, incident.id, worker, "anyone there?")
    stored = await row(sessions, incident.id)
    assert (stored.status, stored.version, stored.title) == (final, incident.version, "Mail is down")


async def test_a_resolved_incident_keeps_a_resolution(sessions: Sessions, worker: Principal) -> None:
    incident = await at_status(sessions, worker, "resolved")
    # Restating the status with a corrected resolution corrects it, rather than dropping it silently.
    corrected = await patch(
        sessions, incident.id, worker, status="resolved", resolution_code="workaround", resolution_notes="rebooted"
    )
    assert (corrected.resolution_code, corrected.resolution_notes) == ("workaround", "rebooted")
    assert corrected.version == incident.version + 1
    for cleared in ({"resolution_code": None}, {"resolution_notes": ""}):
        with pytest.raises(Invalid):
            await patch(sessions, incident.id, worker, **cleared)
    stored = await row(sessions, incident.id)
    assert (stored.resolution_code, stored.version) == ("workaround", corrected.version)


async def test_hold_reason_changes_while_on_hold_and_only_then(sessions: Sessions, worker: Principal) -> None:
    held = await at_status(sessions, worker, "on_hold")
    changed = await patch(sessions, held.id, worker, hold_reason="awaiting_change")
    assert (changed.status, changed.hold_reason) == ("on_hold", "awaiting_change")
    working = await at_status(sessions, worker, "in_progress")
    with pytest.raises(Invalid):
        await patch(sessions, working.id, worker, hold_reason="awaiting_change")


# ---------------------------------------------------------------- priority

PRIORITIES = {(1, 1): 1, (1, 2): 2, (2, 1): 2, (1, 3): 3, (2, 2): 3, (3, 1): 3, (2, 3): 4, (3, 2): 4, (3, 3): 5}


@pytest.mark.parametrize(("impact", "urgency"), sorted(PRIORITIES))
async def test_priority_is_derived_from_impact_and_urgency(
    sessions: Sessions, worker: Principal, impact: int, urgency: int
) -> None:
    created = await open_(sessions, worker, impact=impact, urgency=urgency)
    assert created.priority == PRIORITIES[(impact, urgency)]
    assert (await row(sessions, created.id)).priority == PRIORITIES[(impact, urgency)]


async def test_changing_impact_or_urgency_recomputes_priority(sessions: Sessions, worker: Principal) -> None:
    incident = await open_(sessions, worker, impact=3, urgency=3)
    assert incident.priority == 5
    for impact, urgency in [(1, 3), (1, 1), (2, 1), (2, 3), (3, 2)]:
        previous = incident.priority
        incident = await patch(sessions, incident.id, worker, impact=impact, urgency=urgency)
        assert incident.priority == PRIORITIES[(impact, urgency)]
        last = {h.field: (h.old, h.new) for h in await history_of(sessions, incident.id) if h.field == "priority"}
        if previous != incident.priority:
            assert last["priority"] == (previous, incident.priority)
    only_urgency = await patch(sessions, incident.id, worker, urgency=1)
    assert only_urgency.priority == 3


# ---------------------------------------------------------------- comments from the caller


async def test_a_caller_comment_takes_an_incident_off_awaiting_caller(
    sessions: Sessions, worker: Principal, probe: EventProbe
) -> None:
    caller = person("requester")
    incident = await at_status(sessions, worker, "in_progress", caller_id=caller.id)
    held = await patch(sessions, incident.id, worker, status="on_hold", hold_reason="awaiting_caller")
    await comment(sessions, incident.id, worker, "could you send a screenshot?")
    assert (await row(sessions, incident.id)).status == "on_hold"  # the agent's own comment does not move it
    await comment(sessions, incident.id, caller, "here it is")
    stored = await row(sessions, incident.id)
    assert (stored.status, stored.hold_reason, stored.version) == ("in_progress", None, held.version + 1)
    last = (await history_of(sessions, incident.id))[-2:]
    assert {(h.field, h.old, h.new, h.actor_id) for h in last} == {
        ("status", "on_hold", "in_progress", str(caller.id)),
        ("hold_reason", "awaiting_caller", None, str(caller.id)),
    }
    back = await probe.one(incident.id, "status_changed", sequence=stored.version)
    assert back["data"]["changes"]["status"] == ["on_hold", "in_progress"]
    assert back["actorid"] == str(caller.id) and back["sequence"] == stored.version


@pytest.mark.parametrize("reason", ["awaiting_change", "awaiting_problem", "awaiting_vendor"])
async def test_a_caller_comment_leaves_other_holds_alone(sessions: Sessions, worker: Principal, reason: str) -> None:
    caller = person("requester")
    incident = await at_status(sessions, worker, "in_progress", caller_id=caller.id)
    held = await patch(sessions, incident.id, worker, status="on_hold", hold_reason=reason)
    await comment(sessions, incident.id, caller, "any news?")
    stored = await row(sessions, incident.id)
    assert (stored.status, stored.hold_reason, stored.version) == ("on_hold", reason, held.version)


# ---------------------------------------------------------------- parents and children


async def test_resolving_a_parent_resolves_its_open_children(
    sessions: Sessions, worker: Principal, probe: EventProbe
) -> None:
    parent = await at_status(sessions, worker, "in_progress", title="Site outage")
    new_child = await open_(sessions, worker, parent_id=parent.id)
    held_child = await at_status(sessions, worker, "on_hold", parent_id=parent.id)
    grandchild = await at_status(sessions, worker, "in_progress", parent_id=new_child.id)
    cancelled_child = await at_status(sessions, worker, "cancelled", parent_id=parent.id)
    resolved_child = await at_status(sessions, worker, "in_progress", parent_id=parent.id)
    resolved_child = await patch(
        sessions, resolved_child.id, worker, status="resolved", resolution_code="own", resolution_notes="own fix"
    )
    unrelated = await at_status(sessions, worker, "in_progress")
    await patch(
        sessions, parent.id, worker, status="resolved", resolution_code="fixed_upstream", resolution_notes="ISP fixed"
    )
    for child in (new_child, held_child, grandchild):
        stored = await row(sessions, child.id)
        assert (stored.status, stored.resolution_code, stored.resolution_notes) == (
            "resolved",
            "fixed_upstream",
            "ISP fixed",
        )
        assert stored.version == child.version + 1
        changes = {h.field: (h.old, h.new, h.actor_id) for h in await history_of(sessions, child.id)}
        assert changes["status"] == (child.status, "resolved", str(worker.id))
        assert changes["resolution_code"] == (None, "fixed_upstream", str(worker.id))
        moved = await probe.one(child.id, "status_changed", sequence=stored.version)
        assert moved["data"]["changes"]["status"] == [child.status, "resolved"]
        assert moved["data"]["resolution_code"] == "fixed_upstream" and moved["sequence"] == stored.version
    assert (await row(sessions, cancelled_child.id)).status == "cancelled"
    untouched = await row(sessions, resolved_child.id)
    assert (untouched.resolution_code, untouched.version) == ("own", resolved_child.version)
    assert (await row(sessions, unrelated.id)).status == "in_progress"


async def test_parent_links_cannot_form_a_cycle(sessions: Sessions, worker: Principal) -> None:
    a = await open_(sessions, worker)
    b = await open_(sessions, worker, parent_id=a.id)
    c = await open_(sessions, worker, parent_id=b.id)
    for child, parent in ((a, a), (a, b), (a, c)):
        with pytest.raises(Invalid) as raised:
            await patch(sessions, child.id, worker, parent_id=parent.id)
        assert raised.value.extra["errors"][0]["loc"] == ["body", "parent_id"]
    stored = await row(sessions, a.id)
    assert (stored.parent_id, stored.version) == (None, a.version)
    with pytest.raises(Invalid):
        await open_(sessions, worker, parent_id=uuid.uuid4())
    moved = await patch(sessions, c.id, worker, parent_id=a.id)  # re-parenting without a cycle is fine
    assert moved.parent_id == a.id


# ---------------------------------------------------------------- history


async def test_each_changed_field_gets_a_history_row(sessions: Sessions, worker: Principal) -> None:
    incident = await open_(sessions, worker)
    other = person("agent")
    assignee = uuid.uuid4()
    await patch(sessions, incident.id, other, title="Mail is slow", urgency=1, assignee_id=assignee, category="email")
    rows = await history_of(sessions, incident.id)
    assert {(h.field, h.old, h.new) for h in rows} == {
        ("title", "Mail is down", "Mail is slow"),
        ("urgency", 2, 1),
        ("priority", 3, 2),
        ("assignee_id", None, str(assignee)),
        ("category", None, "email"),
    }
    assert {h.actor_id for h in rows} == {str(other.id)}
    assert len({h.at for h in rows}) == 1 and rows[0].at is not None
    # Setting a field to the value it has is no change: no history, no new version.
    same = await patch(sessions, incident.id, other, title="Mail is slow")
    assert same.version == incident.version + 1
    assert len(await history_of(sessions, incident.id)) == len(rows)


async def test_a_failed_change_leaves_no_history(sessions: Sessions, worker: Principal) -> None:
    incident = await at_status(sessions, worker, "in_progress")
    before = await history_of(sessions, incident.id)
    with pytest.raises(Conflict):
        await patch(sessions, incident.id, worker, title="renamed", impact=1, status="closed")
    with pytest.raises(Invalid):
        await patch(sessions, incident.id, worker, title="renamed", impact=1, parent_id=incident.id)
    with pytest.raises(Invalid):
        await patch(sessions, incident.id, worker, title="renamed", impact=1, status="resolved")
    assert len(await history_of(sessions, incident.id)) == len(before)
    stored = await row(sessions, incident.id)
    assert (stored.title, stored.impact, stored.priority, stored.version) == (
        incident.title,
        incident.impact,
        incident.priority,
        incident.version,
    )


# ---------------------------------------------------------------- auto-close


async def test_autoclose_closes_incidents_resolved_long_enough_ago(
    sessions: Sessions, worker: Principal, probe: EventProbe
) -> None:
    old = await at_status(sessions, worker, "resolved")
    middle = await at_status(sessions, worker, "resolved")
    young = await at_status(sessions, worker, "resolved")
    working = await at_status(sessions, worker, "in_progress")
    now = datetime.now(UTC)
    async with sessions() as session:
        for incident, age in ((old, 10), (middle, 3), (young, 1), (working, 30)):
            await session.execute(
                text("UPDATE incident SET resolved_at = :at WHERE id = :id"),
                {"at": now - timedelta(days=age), "id": incident.id},
            )
        await session.commit()
    async with transaction(sessions) as session:
        await automation.autoclose(session, 7)
    assert [(await row(sessions, i.id)).status for i in (old, middle, young, working)] == [
        "closed",
        "resolved",
        "resolved",
        "in_progress",
    ]
    async with transaction(sessions) as session:
        await automation.autoclose(session, 2)
    assert [(await row(sessions, i.id)).status for i in (middle, young)] == ["closed", "resolved"]
    closed = await row(sessions, old.id)
    assert closed.closed_at is not None and closed.version == old.version + 1
    last = {h.field: (h.old, h.new, h.actor_id) for h in await history_of(sessions, old.id)}
    assert last["status"] == ("resolved", "closed", "system") and last["closed_at"][2] == "system"
    event = await probe.one(old.id, "status_changed", sequence=closed.version)
    assert event["actorid"] == "system" and event["data"]["changes"]["status"] == ["resolved", "closed"]
