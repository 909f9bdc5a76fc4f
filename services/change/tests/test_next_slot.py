"""The next-slot endpoint (issue #6, 5): the first window free of conflicts and blackouts, bounded, and what it
needs to be asked."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from .conftest import TEMPLATE, Actor, at, blackout, create, iso, patch, scheduled, unique_ci, window

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
