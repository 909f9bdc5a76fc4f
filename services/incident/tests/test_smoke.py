from __future__ import annotations

import httpx

from .conftest import Actor, create


async def test_create_read_update_note_history(client: httpx.AsyncClient, agent: Actor) -> None:
    created = await create(client, agent, description="Outlook cannot connect")
    assert created["number"].startswith("INC") and created["priority"] == 3 and created["status"] == "new"
    assert created["sla"]["response_due"] and created["sla"]["resolution_due"]
    by_number = await client.get(f"/api/v1/incidents/{created['number']}", headers=agent.headers)
    assert by_number.status_code == 200 and by_number.json()["id"] == created["id"]
    patched = await client.patch(
        f"/api/v1/incidents/{created['id']}",
        headers=agent.headers,
        json={"status": "on_hold", "hold_reason": "awaiting_caller", "impact": 1},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["priority"] == 2 and patched.json()["sla"]["resolution"]["paused"] is True
    note = await client.post(
        f"/api/v1/incidents/{created['id']}/notes",
        headers=agent.headers,
        json={"body": "asked the caller", "visibility": "public"},
    )
    assert note.status_code == 201
    history = (await client.get(f"/api/v1/incidents/{created['id']}/history", headers=agent.headers)).json()
    assert {h["field"] for h in history} >= {"status", "impact", "priority", "hold_reason"}
    listed = (await client.get("/api/v1/incidents?q=outlook", headers=agent.headers)).json()
    assert created["id"] in [i["id"] for i in listed["items"]]
