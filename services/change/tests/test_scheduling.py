"""Scheduling (issue #6, 4 and 5): overlaps on shared configuration items, blackout windows one-off and
recurring across DST, emergency changes in a blackout, the conflicts and next-slot endpoints, the calendar as
JSON and as iCalendar read back with the icalendar library."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import icalendar
import pytest
from change import recurrence, scheduling
from change.models import BlackoutWindow

from .conftest import LOW, PLANS, TEMPLATE, Actor, at, create, decide, iso, move, patch, unique_ci, window

BERLIN = ZoneInfo("Europe/Berlin")


async def scheduled(client: httpx.AsyncClient, who: Actor, start: datetime, hours: float, *cis: str) -> dict[str, Any]:
    """A standard change scheduled at [start, start + hours) on `cis`."""
    change = await create(client, who, type="standard", **PLANS, **window(start, hours, *cis))
    return await move(client, who, change, "scheduled")


async def try_schedule(
    client: httpx.AsyncClient, who: Actor, start: datetime, hours: float, *cis: str, type: str = "standard"
) -> httpx.Response:
    change = await create(client, who, type=type, **PLANS, **window(start, hours, *cis))
    return await patch(client, who, change, status="scheduled")


async def blackout(client: httpx.AsyncClient, who: Actor, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/blackout-windows", headers=who.headers, json={"name": "freeze", **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


# ---------------------------------------------------------------- overlap edge cases


async def test_touching_windows_do_not_conflict(client: httpx.AsyncClient, agent: Actor) -> None:
    ci = unique_ci()
    await scheduled(client, agent, at(20, 10), 2, ci)
    after = await try_schedule(client, agent, at(20, 12), 2, ci)
    assert after.status_code == 200, after.text
    before = await try_schedule(client, agent, at(20, 8), 2, ci)
    assert before.status_code == 200, before.text


async def test_overlap_on_a_shared_item_is_409_listing_each_conflict(client: httpx.AsyncClient, agent: Actor) -> None:
    ci, other, third = unique_ci(), unique_ci(), unique_ci()
    first = await scheduled(client, agent, at(21, 10), 2, ci, other)
    second = await scheduled(client, agent, at(21, 13), 1, third)
    refused = await try_schedule(client, agent, at(21, 11) + timedelta(minutes=59), 2, ci, third, unique_ci())
    assert refused.status_code == 409
    problem = refused.json()
    assert problem["type"].endswith("/conflict") and problem["status"] == 409
    assert [(c["kind"], c["change_id"], c["configuration_items"]) for c in problem["conflicts"]] == [
        ("change", first["id"], [ci]),
        ("change", second["id"], [third]),
    ]
    assert problem["conflicts"][0]["number"] == first["number"] and problem["conflicts"][0]["blocking"] is True


async def test_one_minute_of_overlap_is_enough(client: httpx.AsyncClient, agent: Actor) -> None:
    ci = unique_ci()
    await scheduled(client, agent, at(22, 10), 2, ci)
    late = await try_schedule(client, agent, at(22, 12) - timedelta(minutes=1), 1, ci)
    assert late.status_code == 409


async def test_different_items_do_not_conflict(client: httpx.AsyncClient, agent: Actor) -> None:
    await scheduled(client, agent, at(23, 10), 2, unique_ci())
    assert (await try_schedule(client, agent, at(23, 10), 2, unique_ci())).status_code == 200


async def test_offsets_are_compared_as_instants(client: httpx.AsyncClient, agent: Actor) -> None:
    ci = unique_ci()
    await scheduled(client, agent, at(24, 10), 2, ci)  # 10:00-12:00 UTC
    berlin_1230 = (at(24, 11) + timedelta(minutes=30)).astimezone(BERLIN)  # 12:30+01:00 = 11:30Z
    change = await create(
        client,
        agent,
        type="standard",
        **PLANS,
        configuration_items=[ci],
        planned_start=berlin_1230.isoformat(),
        planned_end=(berlin_1230 + timedelta(hours=1)).isoformat(),
    )
    assert (await patch(client, agent, change, status="scheduled")).status_code == 409
    new_york_0700 = at(24, 12).astimezone(ZoneInfo("America/New_York"))  # 07:00-05:00 = 12:00Z: touching
    change = await create(
        client,
        agent,
        type="standard",
        **PLANS,
        configuration_items=[ci],
        planned_start=new_york_0700.isoformat(),
        planned_end=(new_york_0700 + timedelta(hours=1)).isoformat(),
    )
    assert new_york_0700.isoformat().endswith("-05:00")
    assert (await patch(client, agent, change, status="scheduled")).status_code == 200


async def test_only_scheduled_and_implementing_changes_hold_their_window(
    client: httpx.AsyncClient, agent: Actor
) -> None:
    ci = unique_ci()
    await create(client, agent, type="standard", **PLANS, **window(at(25, 10), 2, ci))  # new: holds nothing
    cancelled = await scheduled(client, agent, at(25, 10), 2, ci)
    await move(client, agent, cancelled, "cancelled")
    implementing = await scheduled(client, agent, at(25, 10), 2, ci)
    await move(client, agent, implementing, "implement")
    refused = await try_schedule(client, agent, at(25, 11), 2, ci)
    assert [c["change_id"] for c in refused.json()["conflicts"]] == [implementing["id"]]


async def test_rescheduling_a_scheduled_change_is_checked(client: httpx.AsyncClient, agent: Actor) -> None:
    ci = unique_ci()
    await scheduled(client, agent, at(26, 10), 2, ci)
    mover = await scheduled(client, agent, at(26, 14), 2, ci)
    into = await patch(client, agent, mover, planned_start=iso(at(26, 11)), planned_end=iso(at(26, 13)))
    assert into.status_code == 409
    unchanged = (await client.get(f"/api/v1/changes/{mover['id']}", headers=agent.headers)).json()
    assert unchanged["version"] == mover["version"] and unchanged["planned_start"] == mover["planned_start"]
    adding = await patch(client, agent, mover, configuration_items=[unique_ci()], planned_start=iso(at(26, 11)))
    assert adding.status_code == 200, "on other items the window is free"
    back = await patch(client, agent, adding.json(), configuration_items=[ci])
    assert back.status_code == 409
    for cleared in ({"planned_start": None}, {"planned_end": None}, {"configuration_items": []}):
        assert (await patch(client, agent, adding.json(), **cleared)).status_code == 422, cleared


async def test_conflicts_endpoint_lists_them_at_any_time(
    client: httpx.AsyncClient, agent: Actor, manager: Actor
) -> None:
    ci = unique_ci()
    holder = await scheduled(client, agent, at(27, 10), 2, ci)
    freeze = await blackout(
        client, manager, start=iso(at(27, 11)), end=iso(at(27, 15)), timezone="UTC", configuration_items=[ci]
    )
    change = await create(client, agent, **window(at(27, 11), 1, ci))  # new, not yet scheduled
    listed = (await client.get(f"/api/v1/changes/{change['id']}/conflicts", headers=agent.headers)).json()
    assert [(c["kind"], c.get("change_id") or c.get("blackout_window_id")) for c in listed["conflicts"]] == [
        ("change", holder["id"]),
        ("blackout_window", freeze["id"]),
    ]
    assert listed["conflicts"][1]["start"].startswith("2031-02-02T11:00:00")
    bare = await create(client, agent)
    assert (await client.get(f"/api/v1/changes/{bare['id']}/conflicts", headers=agent.headers)).json()[
        "conflicts"
    ] == []


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


# ---------------------------------------------------------------- next slot


async def next_slot(client: httpx.AsyncClient, who: Actor, change: dict[str, Any], **params: Any) -> dict[str, Any]:
    response = await client.get(f"/api/v1/changes/{change['id']}/next-slot", headers=who.headers, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_next_slot_jumps_past_conflicts_and_blackouts(
    client: httpx.AsyncClient, agent: Actor, manager: Actor
) -> None:
    ci = unique_ci()
    for start, hours in ((10, 2), (12, 1), (14, 2)):
        await scheduled(client, agent, at(30, start), hours, ci)
    await blackout(client, manager, start=iso(at(30, 16)), end=iso(at(30, 18)), configuration_items=[ci])
    change = await create(client, agent, **window(at(30, 10), 1, ci))
    after = iso(at(30, 10))
    one_hour = await next_slot(client, agent, change, after=after)  # the planned window's length
    assert one_hour["start"].startswith("2031-02-05T13:00:00") and one_hour["end"].startswith("2031-02-05T14:00:00")
    two_hours = await next_slot(client, agent, change, after=after, duration="PT2H")
    assert two_hours["start"].startswith("2031-02-05T18:00:00"), "16:00-18:00 is a blackout"
    in_seconds = await next_slot(client, agent, change, after=after, duration=7200)
    assert in_seconds["start"] == two_hours["start"]
    emergency = await create(client, agent, type="emergency", **window(at(30, 10), 1, ci))
    ignores_blackout = await next_slot(client, agent, emergency, after=after, duration="PT2H")
    assert ignores_blackout["start"].startswith("2031-02-05T16:00:00")
    free = await next_slot(client, agent, change, after=iso(at(30, 9)), duration="PT1H")
    assert free["start"].startswith("2031-02-05T09:00:00"), "a slot ending where a change starts is free"
    # the suggestion is schedulable
    taken = await patch(
        client,
        agent,
        change,
        planned_start=two_hours["start"],
        planned_end=two_hours["end"],
        type="standard",
        standard_template_id=TEMPLATE["id"],
    )
    assert (await patch(client, agent, taken.json(), status="scheduled")).status_code == 200


async def test_next_slot_is_bounded(client: httpx.AsyncClient, agent: Actor, manager: Actor) -> None:
    ci = unique_ci()
    await blackout(
        client, manager, start=iso(at(40, 0)), end=iso(at(40, 23)), rrule="FREQ=DAILY", configuration_items=[ci]
    )
    change = await create(client, agent, **window(at(40, 1), 2, ci))
    none = await next_slot(client, agent, change, after=iso(at(40, 0)))
    assert none["start"] is None and none["end"] is None, "no two free hours in a day with one"
    one = await next_slot(client, agent, change, after=iso(at(40, 0)), duration="PT1H")
    assert one["start"].startswith("2031-02-15T23:00:00")


async def test_next_slot_needs_a_duration_and_an_offset(client: httpx.AsyncClient, agent: Actor) -> None:
    change = await create(client, agent)
    url = f"/api/v1/changes/{change['id']}/next-slot"
    assert (await client.get(url, headers=agent.headers)).status_code == 422
    naive = await client.get(url, headers=agent.headers, params={"duration": "PT1H", "after": "2031-01-01T00:00:00"})
    assert naive.status_code == 422
    too_long = await client.get(url, headers=agent.headers, params={"duration": "P40D"})
    assert too_long.status_code == 422
    now = await client.get(url, headers=agent.headers, params={"duration": "PT1H"})
    assert now.status_code == 200
    assert datetime.fromisoformat(now.json()["start"]) > datetime.now(UTC)


# ---------------------------------------------------------------- calendar


async def test_calendar_as_json(client: httpx.AsyncClient, agent: Actor, manager: Actor) -> None:
    ci = unique_ci()
    inside = await scheduled(client, agent, at(50, 10), 2, ci)
    tentative = await create(client, agent, **window(at(50, 14), 1, ci))
    cancelled = await scheduled(client, agent, at(50, 16), 1, ci)
    await move(client, agent, cancelled, "cancelled")
    await scheduled(client, agent, at(52, 10), 1, ci)  # outside the range
    freeze = await blackout(
        client,
        manager,
        timezone="Europe/Berlin",
        start="2031-02-25T20:00:00",
        end="2031-02-25T22:00:00",
        rrule="FREQ=DAILY;COUNT=3",
        configuration_items=[ci],
    )
    params = {"start": iso(at(50)), "end": iso(at(51)), "configuration_item": ci}
    response = await client.get("/api/v1/changes/calendar", headers=agent.headers, params=params)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert [c["id"] for c in body["changes"]] == [inside["id"], tentative["id"]]
    assert [(b["id"], b["start"]) for b in body["blackout_windows"]] == [(freeze["id"], "2031-02-25T19:00:00Z")]
    other = (
        await client.get(
            "/api/v1/changes/calendar", headers=agent.headers, params={**params, "configuration_item": "x"}
        )
    ).json()
    assert all(c["id"] != inside["id"] for c in other["changes"])


async def test_calendar_as_icalendar(client: httpx.AsyncClient, agent: Actor, manager: Actor) -> None:
    ci = unique_ci()
    change = await scheduled(client, agent, at(60, 10), 2, ci)
    await blackout(
        client,
        manager,
        name="weekend",
        timezone="Europe/Berlin",
        start="2031-03-07T18:00:00",
        end="2031-03-10T06:00:00",
        rrule="FREQ=WEEKLY;BYDAY=FR",
        configuration_items=[ci],
    )
    params = {"start": "2031-03-01T00:00:00Z", "end": "2031-04-10T00:00:00Z", "configuration_item": ci}
    response = await client.get(
        "/api/v1/changes/calendar", headers={**agent.headers, "Accept": "text/calendar"}, params=params
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/calendar")
    cal = icalendar.Calendar.from_ical(response.content)
    assert str(cal["VERSION"]) == "2.0" and "PRODID" in cal
    events = cal.walk("VEVENT")
    changes = [e for e in events if "CHANGE" in [str(c) for c in e["CATEGORIES"].cats]]
    assert [str(e["UID"]) for e in changes] == [f"{change['id']}@change.itsm"]
    assert changes[0].decoded("DTSTART") == at(60, 10) and changes[0].decoded("DTEND") == at(60, 12)
    assert str(changes[0]["SUMMARY"]).startswith(change["number"]) and int(changes[0]["SEQUENCE"]) == change["version"]
    assert str(changes[0]["STATUS"]) == "CONFIRMED"
    blackouts = sorted(
        (e.decoded("DTSTART"), e.decoded("DTEND")) for e in events if str(e["SUMMARY"]).startswith("Blackout")
    )
    utc = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731
    assert blackouts[:3] == [
        (utc(2031, 3, 7, 17), utc(2031, 3, 10, 5)),
        (utc(2031, 3, 14, 17), utc(2031, 3, 17, 5)),
        (utc(2031, 3, 21, 17), utc(2031, 3, 24, 5)),
    ]
    assert (utc(2031, 3, 28, 17), utc(2031, 3, 31, 4)) in blackouts and (
        utc(2031, 4, 4, 16),
        utc(2031, 4, 7, 4),
    ) in blackouts
    assert len({str(e["UID"]) for e in events}) == len(events), "every occurrence has its own UID"
    by_format = await client.get("/api/v1/changes/calendar", headers=agent.headers, params={**params, "format": "ics"})
    assert by_format.headers["content-type"].startswith("text/calendar")


async def test_calendar_range_is_checked(client: httpx.AsyncClient, agent: Actor) -> None:
    url = "/api/v1/changes/calendar"
    backwards = await client.get(url, headers=agent.headers, params={"start": iso(at(2)), "end": iso(at(1))})
    assert backwards.status_code == 422
    too_long = await client.get(url, headers=agent.headers, params={"start": iso(at(0)), "end": iso(at(400))})
    assert too_long.status_code == 422
    naive = await client.get(url, headers=agent.headers, params={"start": "2031-01-01T00:00:00"})
    assert naive.status_code == 422
    default = await client.get(url, headers=agent.headers)
    assert default.status_code == 200
    body = default.json()
    assert datetime.fromisoformat(body["start"]) < datetime.now(UTC) < datetime.fromisoformat(body["end"])


async def test_concurrent_schedulings_on_one_item_let_one_through(client: httpx.AsyncClient, agent: Actor) -> None:
    """The check and the move commit under a per-item advisory lock: two overlapping changes racing for the same
    item cannot both pass."""
    ci = unique_ci()
    changes = [await create(client, agent, type="standard", **PLANS, **window(at(70, 10), 2, ci)) for _ in range(4)]
    responses = await asyncio.gather(*(patch(client, agent, c, status="scheduled") for c in changes))
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409]
