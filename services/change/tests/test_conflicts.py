"""Scheduling conflicts (issue #6, 4): overlaps on shared configuration items and their edge cases, the conflicts
endpoint, and concurrent schedulings of one item."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from zoneinfo import ZoneInfo

import httpx

from .conftest import (
    BERLIN,
    PLANS,
    Actor,
    at,
    blackout,
    create,
    iso,
    move,
    patch,
    scheduled,
    try_schedule,
    unique_ci,
    window,
)

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
    assert (await try_schedule(client, agent, berlin_1230, 1, ci)).status_code == 409
    new_york_0700 = at(24, 12).astimezone(ZoneInfo("America/New_York"))  # 07:00-05:00 = 12:00Z: touching
    assert new_york_0700.isoformat().endswith("-05:00")
    assert (await try_schedule(client, agent, new_york_0700, 1, ci)).status_code == 200


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


async def test_concurrent_schedulings_on_one_item_let_one_through(client: httpx.AsyncClient, agent: Actor) -> None:
    """The check and the move commit under a per-item advisory lock: two overlapping changes racing for the same
    item cannot both pass."""
    ci = unique_ci()
    changes = [await create(client, agent, type="standard", **PLANS, **window(at(70, 10), 2, ci)) for _ in range(4)]
    responses = await asyncio.gather(*(patch(client, agent, c, status="scheduled") for c in changes))
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409]
