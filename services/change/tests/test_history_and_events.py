"""A change's record: field-level history and the update events of a PATCH."""

from __future__ import annotations

import httpx
from itsm_shared.testing import EventProbe

from .conftest import Actor, create, patch, unique_ci

# ---------------------------------------------------------------- history and events


async def test_field_level_history_and_update_events(
    client: httpx.AsyncClient, agent: Actor, probe: EventProbe
) -> None:
    change = await create(client, agent, title="Old title")
    ci = unique_ci()
    updated = await patch(client, agent, change, title="New title", configuration_items=[ci, ci, " x "])
    assert updated.status_code == 200
    assert updated.json()["configuration_items"] == [ci, "x"] and updated.json()["version"] == 2
    same = await patch(client, agent, updated.json(), title="New title")
    assert same.json()["version"] == 2, "a PATCH that changes nothing is no new version"
    events = await probe.expect(change["id"], "created", "updated")
    update = next(e for e in events if e["type"] == "itsm.change.updated")
    assert update["data"]["changes"] == {"title": ["Old title", "New title"], "configuration_items": [[], [ci, "x"]]}
    assert update["sequence"] == 2 and update["actorid"] == str(agent.id) and update["source"] == "/itsm/change"
    assert probe.message_of(update).message_id == update["id"]
    assert probe.message_of(update).routing_key == "change.updated"
    history = (await client.get(f"/api/v1/changes/{change['id']}/history", headers=agent.headers)).json()
    assert [(h["field"], h["old"], h["new"]) for h in history] == [
        ("title", "Old title", "New title"),
        ("configuration_items", [], [ci, "x"]),
    ]
    assert all(h["actor_id"] == str(agent.id) for h in history)
