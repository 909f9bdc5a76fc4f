"""Issue #11, point 16: a requester could set impact 1 and urgency 1 and so raise a P1 (15 minutes to respond, around
the clock). The requester policy (`/api/v1/incidents/requester-policy`, admins write) decides what becomes of a
requester's impact and urgency: `accept` (taken, as before), `cap` (taken up to a highest priority; the default,
P3), `ignore` (3 and 3). Agents and admins are never capped.

The policy is shared by the whole test session: the `requester_policy` fixture puts the previous one back."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from incident.models import RequesterMode, RequesterPolicy
from incident.policies import requester_priority
from itsm_shared.priority import priority
from itsm_shared.testing import EventProbe

from .conftest import Actor, create

POLICY = "/api/v1/incidents/requester-policy"
P1 = {"impact": 1, "urgency": 1}

SetPolicy = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def requester(actor: Callable[..., Actor]) -> Actor:
    return actor("requester")


@pytest.fixture
async def requester_policy(client: httpx.AsyncClient, admin: Actor) -> AsyncIterator[SetPolicy]:
    before = (await client.get(POLICY, headers=admin.headers)).json()

    async def put(mode: str, highest_priority: int = 3) -> dict[str, Any]:
        body = {"mode": mode, "highest_priority": highest_priority}
        response = await client.put(POLICY, headers=admin.headers, json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    yield put
    await put(before["mode"], before["highest_priority"])


async def test_a_requester_no_longer_raises_a_p1(
    client: httpx.AsyncClient, requester: Actor, agent: Actor, requester_policy: SetPolicy, probe: EventProbe
) -> None:
    """The attack: a requester posts impact 1, urgency 1. With `accept` (what every requester got before) that is
    a P1 with P1's clocks; under the default policy it is P3, with P3's clocks, in the record and in its event."""
    await requester_policy("accept")
    before = await create(client, requester, title="Everything is on fire", **P1)
    assert (before["impact"], before["urgency"], before["priority"]) == (1, 1, 1)

    await requester_policy("cap", 3)  # the default
    capped = await create(client, requester, title="Everything is on fire", **P1)
    assert capped["priority"] == 3
    # The requester's urgency is kept (how pressing it is for them); the impact (how far it reaches) is lowered.
    assert (capped["impact"], capped["urgency"]) == (3, 1)
    assert capped["sla"]["response"]["target_seconds"] > before["sla"]["response"]["target_seconds"]
    by_agent = await create(client, agent, **{"impact": 3, "urgency": 1})
    assert capped["sla"]["response"]["target_seconds"] == by_agent["sla"]["response"]["target_seconds"]

    stored = (await client.get(f"/api/v1/incidents/{capped['id']}", headers=requester.headers)).json()
    assert (stored["impact"], stored["urgency"], stored["priority"]) == (3, 1, 3)
    event = await probe.one(capped["id"], "created", sequence=1)
    assert (event["data"]["impact"], event["data"]["urgency"], event["data"]["priority"]) == (3, 1, 3)
    # The same event, the same shape: only the values the policy took differ.
    original = await probe.one(before["id"], "created", sequence=1)
    assert set(event) == set(original) and set(event["data"]) == set(original["data"])


async def test_agents_and_admins_are_not_capped(
    client: httpx.AsyncClient, requester: Actor, agent: Actor, admin: Actor, requester_policy: SetPolicy
) -> None:
    await requester_policy("ignore")
    for who in (agent, admin):
        own = await create(client, who, **P1)
        assert own["priority"] == 1
    # Raised by an agent for the requester (the caller), after triage: as the agent says.
    for_them = await create(client, agent, caller_id=str(requester.id), **P1)
    assert (for_them["caller_id"], for_them["priority"]) == (str(requester.id), 1)
    # And an agent may raise a requester's incident to P1 afterwards.
    mine = await create(client, requester, **P1)
    assert (mine["impact"], mine["urgency"], mine["priority"]) == (3, 3, 5)
    raised = await client.patch(f"/api/v1/incidents/{mine['id']}", headers=agent.headers, json=P1)
    assert raised.status_code == 200, raised.text
    assert raised.json()["priority"] == 1


@pytest.mark.parametrize(
    ("mode", "highest", "given", "taken"),
    [
        ("ignore", 3, (1, 1), (3, 3)),
        ("ignore", 3, (2, 3), (3, 3)),
        ("cap", 2, (1, 1), (2, 1)),
        ("cap", 2, (1, 2), (1, 2)),
        ("cap", 3, (2, 3), (2, 3)),  # below the cap: as given
        ("cap", 4, (1, 1), (3, 2)),
        ("cap", 1, (1, 1), (1, 1)),
        ("accept", 3, (1, 1), (1, 1)),
    ],
)
async def test_each_mode_through_the_api(
    client: httpx.AsyncClient,
    requester: Actor,
    requester_policy: SetPolicy,
    mode: str,
    highest: int,
    given: tuple[int, int],
    taken: tuple[int, int],
) -> None:
    await requester_policy(mode, highest)
    created = await create(client, requester, impact=given[0], urgency=given[1])
    assert (created["impact"], created["urgency"], created["priority"]) == (*taken, priority(*taken))


def test_capping_lowers_no_more_than_it_must() -> None:
    for highest, (impact, urgency) in itertools.product(range(1, 6), itertools.product(range(1, 4), repeat=2)):
        policy = RequesterPolicy(mode=RequesterMode.CAP, highest_priority=highest)
        i, u = requester_priority(policy, impact, urgency)
        assert i >= impact and u >= urgency, "never more severe than the requester said"
        assert priority(i, u) == max(priority(impact, urgency), highest), (highest, impact, urgency)
        # The urgency is kept whenever lowering the impact alone reaches the cap.
        if priority(3, urgency) >= highest:
            assert u == urgency


async def test_only_admins_change_the_policy(
    client: httpx.AsyncClient, requester: Actor, agent: Actor, admin: Actor, requester_policy: SetPolicy
) -> None:
    for who in (requester, agent):
        read = await client.get(POLICY, headers=who.headers)
        assert read.status_code == 200 and read.json()["mode"] in {m.value for m in RequesterMode}
        refused = await client.put(POLICY, headers=who.headers, json={"mode": "accept"})
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
    assert (await client.get(POLICY)).status_code == 401

    current = await client.get(POLICY, headers=admin.headers)
    version = current.json()["version"]
    assert current.headers["ETag"] == f'"{version}"'
    stale = await client.put(POLICY, headers={**admin.headers, "If-Match": f'"{version - 1}"'}, json={"mode": "ignore"})
    assert stale.status_code == 412
    fresh = await client.put(POLICY, headers={**admin.headers, "If-Match": f'"{version}"'}, json={"mode": "ignore"})
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["version"] == version + 1 and fresh.headers["ETag"] == f'"{version + 1}"'
    for body in (
        {"mode": "trust"},
        {"mode": "cap", "highest_priority": 0},
        {"mode": "cap", "highest_priority": 6},
        {"mode": "cap", "priority": 1},
        {},
    ):
        invalid = await client.put(POLICY, headers=admin.headers, json=body)
        assert invalid.status_code == 422, (body, invalid.text)
        assert invalid.headers["content-type"] == "application/problem+json"


async def test_the_default_is_a_cap_at_p3(client: httpx.AsyncClient, requester: Actor) -> None:
    """What the migration seeds, and what a fresh installation does without an admin doing anything."""
    policy = (await client.get(POLICY, headers=requester.headers)).json()
    assert (policy["mode"], policy["highest_priority"]) == ("cap", 3)
