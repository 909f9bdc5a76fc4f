"""Blackout recurrence within limits (issue #11, point 8): a rule that would make an expansion walk millions of
occurrences is refused with 422, a stored one (written before the limits, or straight into the database) does not
hang a conflict check or the calendar, and every expansion walks only the asked range."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from change import recurrence, scheduling
from change.models import BlackoutWindow
from dateutil.rrule import rrulestr
from fastapi import FastAPI
from itsm_shared.db import transaction
from sqlalchemy import text

from .conftest import PLANS, Actor, at, create, iso, patch, unique_ci, window

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
GENEROUS = 60.0  # seconds: completion is what is asserted, not speed

# ---------------------------------------------------------------- the attacks, through the API

EVERY_SECOND = ",".join(str(s) for s in range(60))
MALICIOUS = [
    "FREQ=HOURLY;FREQ=SECONDLY",  # only the first FREQ was checked
    "FREQ=SECONDLY;FREQ=HOURLY",
    f"FREQ=HOURLY;BYSECOND={EVERY_SECOND}",  # "hourly", 3600 times an hour
    f"FREQ=HOURLY;BYMINUTE={EVERY_SECOND}",
    "FREQ=MINUTELY",
    "FREQ=SECONDLY",
    "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",  # never occurs: dateutil walks every day up to year 9999
    "FREQ=HOURLY;BYMONTH=4;BYMONTHDAY=31",
    "FREQ=MONTHLY;BYSETPOS=300;BYMONTHDAY=1",
    "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO",  # once in 28 years
    "FREQ=HOURLY;INTERVAL=1000000000",
    "FREQ=DAILY;COUNT=1000000000",
    "FREQ=DAILY;COUNT=3;UNTIL=20310101T000000Z",
    "FREQ=YEARLY;BYEASTER=0",
    "FREQ=YEARLY;BYWEEKNO=53",
]


@pytest.mark.parametrize("rule", MALICIOUS)
async def test_a_rule_that_would_walk_millions_of_occurrences_is_422(
    client: httpx.AsyncClient, manager: Actor, rule: str
) -> None:
    body = {"name": "freeze", "start": "2031-01-03T18:00:00", "end": "2031-01-03T20:00:00", "rrule": rule}
    created = await client.post("/api/v1/blackout-windows", headers=manager.headers, json=body)
    assert created.status_code == 422, created.text
    assert created.json()["errors"][0]["loc"] == ["body", "rrule"]
    plain = await client.post("/api/v1/blackout-windows", headers=manager.headers, json={**body, "rrule": None})
    assert plain.status_code == 201, plain.text
    url = f"/api/v1/blackout-windows/{plain.json()['id']}"
    try:
        patched = await client.patch(url, headers=manager.headers, json={"rrule": rule})
        assert patched.status_code == 422, patched.text
    finally:
        await client.delete(url, headers=manager.headers)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("1990-01-01T00:00:00", "1990-01-01T01:00:00"),  # an old start: the walk from it was the hang
        ("2200-01-01T00:00:00", "2200-01-01T01:00:00"),
        ("2031-01-01T00:00:00", "2032-06-01T00:00:00"),  # one occurrence longer than a year
        ("0001-01-01T00:00:00+00:00", "0001-01-01T01:00:00+00:00"),  # would overflow in a zone west of UTC
    ],
)
async def test_the_start_and_length_of_a_recurring_window_are_bounded(
    client: httpx.AsyncClient, manager: Actor, start: str, end: str
) -> None:
    body = {"name": "old", "timezone": "America/New_York", "start": start, "end": end, "rrule": "FREQ=HOURLY"}
    response = await client.post("/api/v1/blackout-windows", headers=manager.headers, json=body)
    assert response.status_code == 422, response.text


# ---------------------------------------------------------------- stored rules that break the limits


async def insert_blackout(app: FastAPI, ci: str, rule: str, start: datetime, hours: float = 2) -> uuid.UUID:
    """A window written straight into the database, as one created before the limits would be stored."""
    window_id = uuid.uuid4()
    async with transaction(app.state.sessions) as session:
        await session.execute(
            text(
                "INSERT INTO blackout_window (id, name, timezone, starts_at, ends_at, rrule, configuration_items,"
                " created_by) VALUES (:id, 'stored', 'UTC', :start, :end, :rule, CAST(:cis AS text[]), :by)"
            ),
            {
                "id": window_id,
                "start": start,
                "end": start + timedelta(hours=hours),
                "rule": rule,
                "cis": [ci],
                "by": uuid.uuid4(),
            },
        )
    return window_id


STORED = [
    "FREQ=SECONDLY",
    "FREQ=HOURLY;FREQ=SECONDLY",
    f"FREQ=HOURLY;BYSECOND={EVERY_SECOND}",
    "FREQ=MINUTELY;BYHOUR=3;BYMINUTE=7",
    "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
    "FREQ=SECONDLY;COUNT=2000000000",
]


@pytest.mark.timeout(240)  # before the fix the event loop never came back: fail, do not hang the suite
@pytest.mark.parametrize("rule", STORED)
async def test_a_stored_pathological_rule_does_not_hang_checks_or_the_calendar(
    app: FastAPI, client: httpx.AsyncClient, agent: Actor, manager: Actor, rule: str
) -> None:
    ci = unique_ci()
    stored = await insert_blackout(app, ci, rule, datetime(2000, 1, 3, 10))

    async def bounded(request: Any) -> httpx.Response:
        response: httpx.Response = await asyncio.wait_for(request, timeout=GENEROUS)
        assert response.status_code == 200, response.text
        return response

    change = await create(client, manager, type="standard", **PLANS, **window(at(80, 10), 2, ci))
    conflicts = await bounded(client.get(f"/api/v1/changes/{change['id']}/conflicts", headers=agent.headers))
    assert conflicts.json()["conflicts"] == [], "the stored rule is not expanded: its first occurrence is in 2000"
    params = {"start": iso(at(79)), "end": iso(at(79) + timedelta(days=366)), "configuration_item": ci}
    calendar = await bounded(client.get("/api/v1/changes/calendar", headers=agent.headers, params=params))
    assert calendar.json()["blackout_windows"] == []
    await bounded(client.get(f"/api/v1/changes/{change['id']}/next-slot", headers=agent.headers))
    await bounded(patch(client, manager, change, status="scheduled"))
    listed = await bounded(client.get(f"/api/v1/blackout-windows/{stored}", headers=agent.headers))
    assert listed.json()["rrule"] == rule
    # ... and the change manager can still correct or delete it
    fixed = await client.patch(f"/api/v1/blackout-windows/{stored}", headers=manager.headers, json={"rrule": None})
    assert fixed.status_code == 200, fixed.text
    assert (await client.delete(f"/api/v1/blackout-windows/{stored}", headers=manager.headers)).status_code == 204


async def test_a_stored_rule_within_the_limits_still_blocks_however_old(
    app: FastAPI, client: httpx.AsyncClient, agent: Actor, manager: Actor
) -> None:
    """A daily rule from 1990 (older than the API now allows) expands from just before the asked range."""
    ci = unique_ci()
    stored = await insert_blackout(app, ci, "FREQ=DAILY", datetime(1990, 1, 1, 10), hours=2)
    change = await create(client, manager, type="standard", **PLANS, **window(at(81, 11), 2, ci))
    response = await asyncio.wait_for(
        client.get(f"/api/v1/changes/{change['id']}/conflicts", headers=agent.headers), timeout=GENEROUS
    )
    assert [(c["blackout_window_id"], c["start"]) for c in response.json()["conflicts"]] == [
        (str(stored), iso(at(81, 10)).replace("+00:00", "Z"))
    ]
    assert (await patch(client, manager, change, status="scheduled")).status_code == 409


def finishes(work: Callable[[], object], timeout: float = GENEROUS) -> object:
    """Run `work` in a thread and give it `timeout` seconds: a walk that never ends fails the test instead of
    hanging it (the thread is a daemon)."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still expanding after {timeout} s"
    return result[0]


@pytest.mark.parametrize("rule", STORED)
def test_expanding_a_pathological_rule_ends(rule: str) -> None:
    stored = BlackoutWindow(
        id=uuid.uuid4(),
        name="stored",
        timezone="UTC",
        starts_at=datetime(2000, 1, 3, 10),
        ends_at=datetime(2000, 1, 3, 12),
        rrule=rule,
        configuration_items=[],
        created_by=uuid.uuid4(),
    )
    lo = datetime(2031, 1, 1, tzinfo=UTC)
    found = finishes(lambda: list(scheduling.occurrences(stored, lo, lo + timedelta(days=366))))
    assert found == [], "not expanded: only its first occurrence (in 2000) applies"


# ---------------------------------------------------------------- expansion within the asked range


def test_an_expansion_in_a_far_year_walks_the_range_only() -> None:
    hourly = recurrence.compile_rule("FREQ=HOURLY", datetime(2031, 1, 1), datetime(2031, 1, 1, 0, 30), UTC_ZONE)
    lo = datetime(9000, 6, 1)
    starts, cut = finishes(lambda: recurrence.expand(hourly, lo, lo + timedelta(days=2)))  # type: ignore[misc]
    assert len(starts) == 49 and not cut and starts[0] == lo
    capped, cut = recurrence.expand(hourly, lo, lo + timedelta(days=366), limit=100)
    assert len(capped) == 100 and cut


def test_expansion_matches_dateutil_walking_from_the_start() -> None:
    """Moving the start next to the range (in the rule's INTERVAL phase, every BY part written out) and the
    400-year frame change nothing: the same occurrences as dateutil's own walk from the rule's first one."""
    rnd = random.Random(11)
    days = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
    checked = 0
    for _ in range(400):
        freq = rnd.choice(["HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY"])
        parts = [f"FREQ={freq}"]
        if rnd.random() < 0.5:
            parts.append(f"INTERVAL={rnd.choice([2, 3, 5, 7, 10, 25])}")
        if rnd.random() < 0.4:
            chosen = rnd.sample(days, rnd.randint(1, 3))
            if freq in ("MONTHLY", "YEARLY") and rnd.random() < 0.5:
                chosen = [f"{rnd.choice([1, 2, -1])}{d}" for d in chosen]
            parts.append("BYDAY=" + ",".join(chosen))
        if rnd.random() < 0.3:
            parts.append("BYMONTHDAY=" + ",".join(str(d) for d in rnd.sample([1, 2, 13, 28, -1, 31], 2)))
        if rnd.random() < 0.3:
            parts.append("BYMONTH=" + ",".join(str(m) for m in rnd.sample(range(1, 13), rnd.randint(1, 6))))
        if rnd.random() < 0.3:
            parts.append("BYHOUR=" + ",".join(str(h) for h in rnd.sample(range(24), rnd.randint(1, 3))))
        if rnd.random() < 0.2:
            parts.append(f"BYSETPOS={rnd.choice([1, -1])}")
        if rnd.random() < 0.2:
            parts.append(f"WKST={rnd.choice(days)}")
        if rnd.random() < 0.2:
            parts.append(f"COUNT={rnd.randint(1, 200)}")
        rule_text = ";".join(parts)
        start = datetime(2031, 1, 1) + timedelta(minutes=rnd.randint(0, 60 * 24 * 400))
        try:
            rule = recurrence.compile_rule(rule_text, start, start + timedelta(hours=2), UTC_ZONE)
        except recurrence.RecurrenceError:
            continue
        reference = rrulestr(rule_text, dtstart=start.replace(tzinfo=UTC_ZONE))
        lo = start + timedelta(hours=rnd.randint(-100, 24 * 365 * 3))
        hi = lo + timedelta(hours=rnd.randint(1, 24 * 60))
        got, _ = recurrence.expand(rule, lo, hi)
        want = [
            o.replace(tzinfo=None) for o in reference.between(lo.replace(tzinfo=UTC), hi.replace(tzinfo=UTC), inc=True)
        ]
        assert got == want, rule_text
        checked += 1
    assert checked > 250


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("FREQ=HOURLY;FREQ=SECONDLY", "twice"),
        ("FREQ=HOURLY;BYSECOND=1", "not supported"),
        ("FREQ=HOURLY;BYMINUTE=0,30", "at most hourly"),
        ("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30", "no occurrence"),
        ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29", "between occurrences"),
        ("FREQ=YEARLY;INTERVAL=10;COUNT=20", "give UNTIL"),
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL"),
        ("FREQ=WEEKLY;COUNT=2;UNTIL=20320101T000000Z", "not both"),
    ],
)
def test_the_limits_name_what_they_refuse(rule: str, why: str) -> None:
    with pytest.raises(recurrence.RecurrenceError, match=why):
        recurrence.compile_rule(rule, datetime(2031, 1, 1, 18), datetime(2031, 1, 1, 20), BERLIN)


def test_a_count_becomes_the_until_of_its_last_occurrence() -> None:
    rule = recurrence.compile_rule("FREQ=WEEKLY;COUNT=3", datetime(2031, 1, 3, 18), datetime(2031, 1, 3, 20), BERLIN)
    assert rule.until == datetime(2031, 1, 17, 18)
    starts, _ = recurrence.expand(rule, datetime(2031, 1, 10), datetime(2031, 12, 31))
    assert starts == [datetime(2031, 1, 10, 18), datetime(2031, 1, 17, 18)]


async def test_a_planned_window_is_at_most_a_year(client: httpx.AsyncClient, agent: Actor) -> None:
    """The conflict check expands blackouts over the planned window: it is bounded like the calendar's range."""
    long = await client.post(
        "/api/v1/changes", headers=agent.headers, json={"type": "normal", "title": "x", **window(at(0), 24 * 367)}
    )
    assert long.status_code == 422, long.text
    change = await create(client, agent, **window(at(0), 2))
    assert (await patch(client, agent, change, planned_end=iso(at(400)))).status_code == 422
    far = await patch(client, agent, change, planned_start="9999-12-31T23:00:00-05:00")
    assert far.status_code == 422, far.text


@pytest.mark.parametrize(
    "params",
    [
        {"start": "9999-12-31T23:00:00-14:00"},
        {"start": "0001-01-01T00:00:00+14:00"},
        {"end": "9999-12-31T00:00:00Z"},
    ],
)
async def test_calendar_times_beyond_the_calendar_are_422(
    client: httpx.AsyncClient, agent: Actor, params: dict[str, str]
) -> None:
    response = await client.get("/api/v1/changes/calendar", headers=agent.headers, params=params)
    assert response.status_code == 422, response.text


async def test_next_slot_after_beyond_the_calendar_is_422(client: httpx.AsyncClient, agent: Actor) -> None:
    change = await create(client, agent, **window(at(0), 2, unique_ci()))
    url = f"/api/v1/changes/{change['id']}/next-slot"
    for params in ({"after": "9999-12-31T00:00:00Z"}, {"duration": "99999999999999999999"}):
        response = await client.get(url, headers=agent.headers, params=params)
        assert response.status_code == 422, (params, response.text)
