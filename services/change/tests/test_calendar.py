"""The change calendar (issue #6, 5): scheduled changes and blackouts as JSON and as iCalendar read back with the
icalendar library, and its range checked."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import icalendar

from .conftest import Actor, at, blackout, create, iso, move, scheduled, unique_ci, window

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
