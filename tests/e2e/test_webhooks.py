"""Issue #12 through the gateway: webhooks to a receiver on this machine, every delivery verified with
`standardwebhooks` (the Standard Webhooks specification's reference library, not our code). The stack runs with
ITSM_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true (conftest.WEBHOOK_ENV); the refusal of private addresses without it is
in services/webhook/tests/test_subscriptions.py."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stack as stack_module
from itsm_shared.testing import eventually
from standardwebhooks import Webhook, WebhookVerificationError

from .conftest import bearer, create_user, token
from .receiver import Answer, Receiver, Request

PASSWORD = "a perfectly fine password"
WAIT = 20.0  # seconds


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


class Verifier:
    """Checks each request of a path with the subscription's secret, as a receiver would."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)

    def event(self, request: Request) -> dict[str, Any]:
        verified = self.webhook.verify(request.body, request.headers)
        assert isinstance(verified, dict)
        return verified


async def integrator(http: httpx.AsyncClient, admin: str) -> dict[str, str]:
    username = f"wh{uuid.uuid4().hex[:10]}"
    await create_user(http, admin, username, PASSWORD, ["integrator"])
    return bearer(str((await token(http, username, PASSWORD))["access_token"]))


async def subscribe(http: httpx.AsyncClient, who: dict[str, str], url: str, **fields: Any) -> dict[str, Any]:
    response = await http.post("/api/v1/webhooks", headers=who, json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def incident(http: httpx.AsyncClient, admin: str, title: str = "Mail is down") -> dict[str, Any]:
    response = await http.post("/api/v1/incidents", headers=bearer(admin), json={"title": title})
    assert response.status_code == 201, response.text
    return dict(response.json())


def about(requests: list[Request], subject: str) -> list[Request]:
    return [r for r in requests if json.loads(r.body).get("subject") == subject]


async def test_creating_an_incident_reaches_the_receiver_signed(
    http: httpx.AsyncClient, admin: str, receiver: Receiver
) -> None:
    who = await integrator(http, admin)
    path = f"/created/{uuid.uuid4().hex[:8]}"
    created = await subscribe(http, who, receiver.url(path), event_types=["itsm.incident.created"])
    verifier = Verifier(created["secret"])

    raised = await incident(http, admin)
    [request] = await eventually(
        lambda: asyncio.sleep(0, about(receiver.received(path), raised["id"])), timeout=WAIT, what="the delivery"
    )
    event = verifier.event(request)
    assert event["type"] == "itsm.incident.created" and event["data"]["id"] == raised["id"]
    assert request.headers["webhook-id"] == event["id"]
    with pytest.raises(WebhookVerificationError):  # and another secret does not verify it
        Webhook("whsec_" + "A" * 44).verify(request.body, request.headers)


async def test_500_twice_then_200_shows_three_attempts(http: httpx.AsyncClient, admin: str, receiver: Receiver) -> None:
    who = await integrator(http, admin)
    raised = await incident(http, admin, "Printer jam")
    path = f"/flaky/{uuid.uuid4().hex[:8]}"
    receiver.script(path, Answer(500), Answer(500))
    created = await subscribe(
        http, who, receiver.url(path), event_types=["itsm.incident.updated"], subjects=[raised["id"]]
    )
    verifier = Verifier(created["secret"])
    changed = await http.patch(f"/api/v1/incidents/{raised['id']}", headers=bearer(admin), json={"urgency": 1})
    assert changed.status_code == 200, changed.text

    async def log() -> list[dict[str, Any]]:
        response = await http.get(f"/api/v1/webhooks/{created['id']}/deliveries", headers=who)
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    [delivery] = await eventually(log, lambda d: d and d[0]["status"] == "succeeded", timeout=WAIT, what="3 attempts")
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert all(a["latency_ms"] >= 0 and a["attempted_at"] for a in delivery["attempts"])
    requests = receiver.received(path)
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {delivery["event_id"]}
    assert all(verifier.event(r)["id"] == delivery["event_id"] for r in requests)


async def test_kill_9_during_delivery_loses_nothing(
    http: httpx.AsyncClient, admin: str, receiver: Receiver, stack: stack_module.Stack
) -> None:
    who = await integrator(http, admin)
    path = f"/slow/{uuid.uuid4().hex[:8]}"
    gate = threading.Event()
    # The first deliveries are held unanswered: they are in flight when the service dies, whatever the timing.
    receiver.script(path, *[Answer(200, gate=gate)] * 4)
    created = await subscribe(http, who, receiver.url(path), event_types=["itsm.incident.created"])
    verifier = Verifier(created["secret"])
    raised = [(await incident(http, admin, f"Outage {n}"))["id"] for n in range(24)]
    await eventually(lambda: asyncio.sleep(0, len(receiver.received(path))), lambda n: n >= 1, timeout=WAIT)
    in_flight = {verifier.event(r)["subject"] for r in receiver.received(path)}

    stack.kill_service("webhook")
    gate.set()  # their answers now go to a dead peer
    stack.restart_service("webhook")

    def delivered() -> set[str]:
        return {verifier.event(r)["subject"] for r in receiver.received(path)} & set(raised)

    await eventually(lambda: asyncio.sleep(0, delivered()), lambda d: d == set(raised), timeout=60)

    async def log() -> list[dict[str, Any]]:
        response = await http.get(f"/api/v1/webhooks/{created['id']}/deliveries?limit=200", headers=who)
        assert response.status_code == 200, response.text
        return [d for d in response.json()["items"] if d["status"] == "succeeded"]

    # The attempts in flight when it died are sent again once their claims run out, and then succeed.
    succeeded = await eventually(log, lambda d: len(d) >= len(raised), timeout=60, what="every delivery succeeded")
    assert len(succeeded) == len(raised)
    ids: dict[str, set[str]] = defaultdict(set)
    for request in receiver.received(path):
        event = verifier.event(request)  # every delivery verifies, retries included
        assert request.headers["webhook-id"] == event["id"]
        ids[event["subject"]].add(event["id"])
    assert all(len(ids[subject]) == 1 for subject in raised), "one webhook-id per event, on every retry"
    repeats = sum(len(about(receiver.received(path), s)) for s in raised) - len(raised)
    assert all(len(about(receiver.received(path), s)) >= 2 for s in in_flight), "in flight at the kill: sent again"
    print(f"\n{len(raised)} events delivered across a kill -9 of the webhook service ({repeats} sent again)")
