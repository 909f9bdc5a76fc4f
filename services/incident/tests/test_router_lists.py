"""The incident HTTP API, the list (GET /api/v1/incidents): every filter, sorting and keyset pagination, invalid
parameters, cursors bound to their sort order."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from incident import automation
from itsm_shared.db import transaction
from sqlalchemy import text

from .conftest import Actor, create
from .router_support import API, STATUSES, assert_problem, get, listed, patch, reach, unique

# ---------------------------------------------------------------- lists


async def test_each_list_filter(client: httpx.AsyncClient, app: FastAPI, agent: Actor) -> None:
    category, group = unique(), unique("group")
    assignee, caller, problem = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    a = await create(
        client,
        agent,
        category=category,
        impact=1,
        urgency=1,
        assignment_group=group,
        assignee_id=str(assignee),
        title="Printer jammed on floor 3",
    )
    b = await create(
        client,
        agent,
        category=category,
        impact=3,
        urgency=3,
        caller_id=str(caller),
        title="Lobby devices offline",
        description="The printers in the lobby do not answer",
    )
    c = await reach(client, agent, "in_progress", category=category)
    d = await reach(client, agent, "on_hold", category=category)
    async with transaction(app.state.sessions) as session:
        await automation.apply_problem_link(
            session, incident_id=uuid.UUID(c["id"]), problem_id=problem, sequence=1, linked=True, note=None
        )
        for incident, year in ((a, 2020), (b, 2021), (c, 2022), (d, 2023)):
            await session.execute(
                text("UPDATE incident SET created_at = make_timestamptz(:y, 6, 1, 12, 0, 0, 'UTC') WHERE id = :id"),
                {"y": year, "id": uuid.UUID(incident["id"])},
            )
        await session.execute(
            text("UPDATE incident SET sla_breached = true WHERE id = :id"), {"id": uuid.UUID(d["id"])}
        )

    async def ids(**params: Any) -> set[str]:
        found = await listed(client, agent, category=category, **params)
        assert len(found) == len(set(found))
        return set(found)

    ia, ib, ic, id_ = a["id"], b["id"], c["id"], d["id"]
    assert await ids() == {ia, ib, ic, id_}
    assert await listed(client, agent, category=unique()) == []
    assert await ids(status="new") == {ia, ib}
    assert await ids(status=["in_progress", "on_hold"]) == {ic, id_}
    assert await ids(status="in_progress,on_hold") == {ic, id_}
    assert await ids(status="closed") == set()
    assert await ids(priority=1) == {ia}
    assert await ids(priority=5) == {ib}
    assert await ids(priority=3) == {ic, id_}
    assert await ids(assignee_id=str(assignee)) == {ia}
    assert set(await listed(client, agent, assignment_group=group)) == {ia}
    assert set(await listed(client, agent, caller_id=str(caller))) == {ib}
    assert set(await listed(client, agent, problem_id=str(problem))) == {ic}
    assert await ids(created_after="2021-01-01T00:00:00Z") == {ib, ic, id_}
    assert await ids(created_before="2022-01-01T00:00:00+00:00") == {ia, ib}
    assert await ids(created_after="2020-12-31T00:00:00Z", created_before="2022-12-31T00:00:00Z") == {ib, ic}
    assert await ids(sla_breached="true") == {id_}
    assert await ids(sla_breached="false") == {ia, ib, ic}
    assert await ids(q="printers") == {ia, ib}  # stemming: "printers" finds "Printer" in a title
    assert await ids(q="printer") == {ia, ib}
    assert await ids(q="lobby answer") == {ib}  # description
    assert await ids(q="jammed") == {ia}
    assert await ids(q="keyboard") == set()
    assert await ids(status="new", priority=1, q="printer") == {ia}


SORTABLE = ("created_at", "priority", "updated_at", "number")


def _key(item: dict[str, Any], name: str) -> tuple[Any, int]:
    value = item[name]
    if name.endswith("_at"):
        value = datetime.fromisoformat(value)
    return value, uuid.UUID(item["id"]).int


async def test_sorting_and_keyset_pagination(client: httpx.AsyncClient, agent: Actor) -> None:
    category = unique()
    cells = [(2, 2), (2, 2), (1, 1), (3, 3), (2, 2), (1, 2), (3, 3)]  # priorities 3 3 1 5 3 2 5: ties on purpose
    made = [await create(client, agent, category=category, impact=i, urgency=u) for i, u in cells]
    for incident in reversed(made[::2]):  # updated_at in another order than created_at
        await patch(client, agent, incident["id"], title=f"touched {incident['number']}")
    everything = {i["id"] for i in made}
    for name in SORTABLE:
        for sort in (name, f"-{name}"):
            whole = await client.get(
                API, headers=agent.headers, params={"category": category, "sort": sort, "limit": 200}
            )
            assert whole.status_code == 200, whole.text
            items = whole.json()["items"]
            assert {i["id"] for i in items} == everything
            assert items == sorted(items, key=lambda i, n=name: _key(i, n), reverse=sort.startswith("-")), sort
            walked: list[str] = []
            pages, cursor = 0, None
            while True:
                params: dict[str, Any] = {"category": category, "sort": sort, "limit": 2}
                if cursor:
                    params["cursor"] = cursor
                page = await client.get(API, headers=agent.headers, params=params)
                assert page.status_code == 200, page.text
                assert 1 <= len(page.json()["items"]) <= 2
                walked += [i["id"] for i in page.json()["items"]]
                pages += 1
                cursor = page.json()["next_cursor"]
                if cursor is None:
                    break
                assert pages < 10, "pagination does not end"
            assert walked == [i["id"] for i in items], sort  # every row once, in order
            assert pages == 4
    exact = await client.get(API, headers=agent.headers, params={"category": category, "limit": 7})
    assert len(exact.json()["items"]) == 7 and exact.json()["next_cursor"] is None
    default = await client.get(API, headers=agent.headers, params={"category": category})
    created = [datetime.fromisoformat(i["created_at"]) for i in default.json()["items"]]
    assert created == sorted(created, reverse=True)  # newest first by default


async def test_a_listed_incident_reads_as_its_own_get(client: httpx.AsyncClient, agent: Actor) -> None:
    """The list renders its page from rows and its clocks' own statement (queries.list_incidents), GET from the
    model: every status's clocks (running, the response stopped, the resolution paused, both stopped) show in the
    list as GET shows them."""
    category = unique()
    made = {status: await reach(client, agent, status, category=category) for status in STATUSES}
    items = (await client.get(API, headers=agent.headers, params={"category": category})).json()["items"]
    assert {i["status"]: i["id"] for i in items} == {status: made[status]["id"] for status in STATUSES}
    for item in items:
        alone = await get(client, agent, item["id"])
        assert _frozen(item) == _frozen(alone), item["status"]
        sla = item["sla"]
        assert {c["state"] for c in (sla["response"], sla["resolution"])} == CLOCK_STATES[item["status"]]


# The states of an incident's two clocks (response, resolution) in each status.
CLOCK_STATES = {
    "new": {"running"},
    "in_progress": {"stopped", "running"},
    "on_hold": {"stopped", "paused"},
    "resolved": {"stopped"},
    "closed": {"stopped"},
    "cancelled": {"stopped"},
}


def _frozen(incident: dict[str, Any]) -> dict[str, Any]:
    """The incident without what a running clock changes between two reads (its elapsed time and percentage)."""
    sla = dict(incident["sla"])
    for kind in ("response", "resolution"):
        if sla[kind]["state"] == "running":
            sla[kind] = {k: v for k, v in sla[kind].items() if k not in ("elapsed_seconds", "percentage")}
    return {**incident, "sla": sla}


def _cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 201},
        {"limit": "ten"},
        {"cursor": "not a cursor"},
        {"cursor": _cursor({"s": "priority", "d": False, "v": "high", "id": str(uuid.uuid4())})},
        {"cursor": _cursor({"s": "priority", "d": False, "v": 99999999, "id": str(uuid.uuid4())})},
        {"cursor": _cursor({"s": "created_at", "d": True, "v": {"t": "yesterday"}, "id": str(uuid.uuid4())})},
        {"cursor": _cursor({"s": "created_at", "d": True, "v": {"t": "2024-01-01T00:00:00+00:00"}, "id": "x"})},
        {"sort": "title"},
        {"sort": "-search"},
        {"status": "open"},
        {"status": "new,bogus"},
        {"priority": 0},
        {"priority": 6},
        {"priority": "high"},
        {"assignee_id": "bob"},
        {"caller_id": "123"},
        {"problem_id": "PRB0000001"},
        {"created_after": "yesterday"},
        {"created_before": "2024-13-01"},
        {"sla_breached": "maybe"},
        {"q": "x" * 501},
    ],
)
async def test_invalid_list_parameters_are_422(client: httpx.AsyncClient, agent: Actor, params: dict[str, Any]) -> None:
    body = assert_problem(await client.get(API, headers=agent.headers, params=params), 422)
    assert body["errors"] and all("loc" in e and "msg" in e for e in body["errors"])


async def test_a_cursor_belongs_to_its_sort_order(client: httpx.AsyncClient, agent: Actor) -> None:
    category = unique()
    for _ in range(3):
        await create(client, agent, category=category)
    page = await client.get(API, headers=agent.headers, params={"category": category, "sort": "priority", "limit": 1})
    cursor = page.json()["next_cursor"]
    assert cursor
    for sort in ("-priority", "created_at"):
        other = await client.get(
            API, headers=agent.headers, params={"category": category, "sort": sort, "cursor": cursor}
        )
        assert_problem(other, 422)
