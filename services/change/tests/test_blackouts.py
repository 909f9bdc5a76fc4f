"""Blackout windows (issue #6, 5): one-off and recurring across DST, scoped to items or global, emergency changes
let in; the occurrences of a recurring window and the rules accepted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from change import recurrence, scheduling
from change.models import BlackoutWindow

from .conftest import (
    BERLIN,
    LOW,
    PLANS,
    Actor,
    at,
    blackout,
    create,
    decide,
    iso,
    move,
    patch,
    try_schedule,
    unique_ci,
    window,
)

# ---------------------------------------------------------------- blackout windows


async def test_a_blackout_refuses_normal_changes_but_lets_an_emergency_in(
    client: httpx.AsyncClient, agent: Actor, manager: Actor, cab: Actor, actor: Any
) -> None:
    ci = unique_ci()
    freeze = await blackout(
        client, manager, start=iso(at(28, 0)), end=iso(at(29, 0)), timezone="UTC", configuration_items=[ci]
    )
    refused = await try_schedule(client, agent, at(28, 10), 1, ci)
    assert refused.status_code == 409
    assert refused.json()["conflicts"][0]["blackout_window_id"] == freeze["id"]
    emergency = await create(client, agent, type="emergency", **PLANS, risk_assessment=LOW, **window(at(28, 10), 1, ci))
    emergency = await move(client, agent, emergency, "authorize")
    decided = await decide(client, actor("change_manager"), emergency, "approve", "the fix cannot wait")
    assert decided.json()["change"]["status"] == "scheduled"
    listed = (await client.get(f"/api/v1/changes/{emergency['id']}/conflicts", headers=agent.headers)).json()
    assert [(c["kind"], c["blocking"]) for c in listed["conflicts"]] == [("blackout_window", False)]
    # ... but not on top of another change
    other = await create(client, agent, type="emergency", **PLANS, risk_assessment=LOW, **window(at(28, 10), 1, ci))
    other = await move(client, agent, other, "authorize")
    approved = (await decide(client, actor("change_manager"), other, "approve")).json()["change"]
    assert approved["status"] == "authorize" and approved["approval"] == "approved"
    blocked = await patch(client, agent, approved, status="scheduled")
    assert [c["kind"] for c in blocked.json()["conflicts"]] == ["change"]


async def test_a_scoped_blackout_applies_to_its_items_only(
    client: httpx.AsyncClient, agent: Actor, manager: Actor
) -> None:
    ci = unique_ci()
    await blackout(client, manager, start=iso(at(29, 10)), end=iso(at(29, 12)), configuration_items=[ci])
    assert (await try_schedule(client, agent, at(29, 10), 1, unique_ci())).status_code == 200
    assert (await try_schedule(client, agent, at(29, 11), 1, unique_ci(), ci)).status_code == 409


async def test_a_global_blackout_applies_to_every_change(
    client: httpx.AsyncClient, agent: Actor, manager: Actor
) -> None:
    start = datetime(2045, 12, 24, tzinfo=UTC)  # a range no other test uses
    freeze = await blackout(
        client, manager, name="holiday freeze", start=iso(start), end=iso(start + timedelta(days=2))
    )
    try:
        assert (await try_schedule(client, agent, start + timedelta(hours=5), 1, unique_ci())).status_code == 409
        assert (await try_schedule(client, agent, start + timedelta(days=2), 1, unique_ci())).status_code == 200
    finally:
        await client.delete(f"/api/v1/blackout-windows/{freeze['id']}", headers=manager.headers)


async def test_recurring_blackout_keeps_its_wall_clock_across_dst(
    client: httpx.AsyncClient, agent: Actor, manager: Actor
) -> None:
    """Every Friday 18:00 to Monday 06:00 Europe/Berlin. On 30 March 2031 Berlin moves from +01:00 to +02:00,
    so that weekend ends at 04:00Z, not 05:00Z; the next one starts at 16:00Z, not 17:00Z."""
    ci = unique_ci()
    await blackout(
        client,
        manager,
        timezone="Europe/Berlin",
        start="2031-03-07T18:00:00",
        end="2031-03-10T06:00:00",
        rrule="FREQ=WEEKLY;BYDAY=FR",
        configuration_items=[ci],
    )
    utc = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731
    cases = [
        (utc(2031, 3, 21, 16, 0), 1, 200),  # winter Friday: 17:00 CET is before 18:00
        (utc(2031, 3, 21, 16, 30), 1, 409),  # runs into 18:00 CET = 17:00Z
        (utc(2031, 3, 24, 4, 0), 1, 409),  # winter Monday 05:00 CET
        (utc(2031, 3, 24, 5, 0), 1, 200),  # touching 06:00 CET
        (utc(2031, 3, 31, 3, 30), 1, 409),  # summer Monday 05:30 CEST
        (utc(2031, 3, 31, 4, 0), 1, 200),  # 06:00 CEST = 04:00Z: touching the end
        (utc(2031, 4, 4, 15, 0), 1, 200),  # summer Friday 17:00 CEST
        (utc(2031, 4, 4, 15, 30), 1, 409),  # into 18:00 CEST = 16:00Z
        (utc(2031, 10, 27, 4, 30), 1, 409),  # back in winter: Monday 05:30 CET
        (utc(2031, 10, 27, 5, 0), 1, 200),
    ]
    for start, hours, code in cases:
        response = await try_schedule(client, agent, start, hours, ci)
        assert response.status_code == code, (start, response.text)


def _window(**kw: Any) -> BlackoutWindow:
    return BlackoutWindow(id=uuid.uuid4(), name="w", created_by=uuid.uuid4(), configuration_items=[], **kw)


def test_occurrences_across_both_dst_changes() -> None:
    weekend = _window(
        timezone="Europe/Berlin",
        starts_at=datetime(2031, 3, 7, 18),
        ends_at=datetime(2031, 3, 10, 6),
        rrule="FREQ=WEEKLY;BYDAY=FR",
    )
    found = list(scheduling.occurrences(weekend, datetime(2031, 3, 20, tzinfo=UTC), datetime(2031, 4, 8, tzinfo=UTC)))
    assert [(o.start.isoformat(), o.end.isoformat()) for o in found] == [
        ("2031-03-21T17:00:00+00:00", "2031-03-24T05:00:00+00:00"),
        ("2031-03-28T17:00:00+00:00", "2031-03-31T04:00:00+00:00"),  # 59 hours: the clocks sprang forward
        ("2031-04-04T16:00:00+00:00", "2031-04-07T04:00:00+00:00"),
    ]
    autumn = list(
        scheduling.occurrences(weekend, datetime(2031, 10, 24, tzinfo=UTC), datetime(2031, 10, 28, tzinfo=UTC))
    )
    assert [(o.start.isoformat(), o.end.isoformat()) for o in autumn] == [
        ("2031-10-24T16:00:00+00:00", "2031-10-27T05:00:00+00:00"),  # 61 hours
    ]


def test_a_range_inside_an_occurrence_finds_it() -> None:
    freeze = _window(timezone="UTC", starts_at=datetime(2031, 12, 1), ends_at=datetime(2032, 1, 5), rrule="FREQ=YEARLY")
    found = list(scheduling.occurrences(freeze, datetime(2032, 12, 20, tzinfo=UTC), datetime(2032, 12, 21, tzinfo=UTC)))
    assert [o.start for o in found] == [datetime(2032, 12, 1, tzinfo=UTC)]


def test_wall_clock_times_skipped_or_repeated_by_dst_cover_the_most() -> None:
    night = _window(
        timezone="Europe/Berlin",
        starts_at=datetime(2031, 3, 29, 2, 30),
        ends_at=datetime(2031, 3, 29, 3, 30),
        rrule="FREQ=DAILY",
    )
    spring = list(scheduling.occurrences(night, datetime(2031, 3, 30, tzinfo=UTC), datetime(2031, 3, 31, tzinfo=UTC)))
    # 02:30 does not exist on the 30th: the window starts at 01:30 CET (00:30Z) and ends at 03:30 CEST (01:30Z).
    assert [(o.start.isoformat(), o.end.isoformat()) for o in spring] == [
        ("2031-03-30T00:30:00+00:00", "2031-03-30T01:30:00+00:00")
    ]
    late = _window(
        timezone="Europe/Berlin",
        starts_at=datetime(2031, 10, 1, 2),
        ends_at=datetime(2031, 10, 1, 3),
        rrule="FREQ=DAILY",
    )
    autumn = list(scheduling.occurrences(late, datetime(2031, 10, 26, tzinfo=UTC), datetime(2031, 10, 27, tzinfo=UTC)))
    # 02:00-03:00 happens twice on the 26th (CEST, then CET): the window covers both, 00:00Z to 02:00Z.
    assert [(o.start.isoformat(), o.end.isoformat()) for o in autumn] == [
        ("2031-10-26T00:00:00+00:00", "2031-10-26T02:00:00+00:00")
    ]


@pytest.mark.parametrize(
    "rule",
    ["FREQ=MINUTELY", "nonsense", "DTSTART:20310101T000000Z\nRRULE:FREQ=DAILY", "RRULE:FREQ=DAILY;UNTIL=20310101"],
)
def test_rules_refused(rule: str) -> None:
    with pytest.raises(ValueError, match=r"RRULE|hourly|one RRULE"):
        recurrence.compile_rule(rule, datetime(2031, 1, 1), datetime(2031, 1, 1, 1), BERLIN)


def test_rules_accepted() -> None:
    for rule in ("FREQ=WEEKLY;BYDAY=FR", "RRULE:FREQ=DAILY;COUNT=3", "FREQ=MONTHLY;UNTIL=20311231T000000Z"):
        recurrence.compile_rule(rule, datetime(2031, 1, 1, 18), datetime(2031, 1, 1, 20), BERLIN)
