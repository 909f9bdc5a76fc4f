"""Deliveries against a receiver on this machine: signed per Standard Webhooks (checked with the specification's
reference library), matching, retries on the schedule, the delivery log, retry by hand, 410 and the failing
streak disabling a subscription, timeouts, connection errors, redirects, a slow endpoint beside a fast one,
replicas sharing claims, a claim whose replica died, rotation's two signatures, replay, and the address checks
made again at each attempt."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from itsm_shared.db import transaction
from itsm_shared.testing import EventProbe, eventually
from itsm_shared.testing_fixtures import Actor
from sqlalchemy import text
from standardwebhooks import Webhook
from webhook import delivery, fanout, ssrf
from webhook.config import get_settings

from .conftest import event_of, inject, log_of, subscribe
from .receiver import Answer, Receiver


@pytest.fixture
def subject() -> str:
    """This test's own entity: its subscriptions take only its events (the exchange and service are shared)."""
    return str(uuid.uuid4())


def verified(secret: str, request: Any) -> dict[str, Any]:
    return dict(Webhook(secret).verify(request.body, request.headers))


async def test_an_event_reaches_the_endpoint_signed(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor, receiver: Receiver, path: str, subject: str
) -> None:
    created = await subscribe(client, integrator, receiver.url(path), subjects=[subject])
    event = event_of("itsm.incident.created", subject)
    [body] = await inject(app, event)
    [request] = await eventually(lambda: asyncio.sleep(0, receiver.received(path)), what="the delivery")
    assert request.body == body  # the event's bytes as consumed
    assert verified(created["secret"], request) == event
    assert request.headers["webhook-id"] == event["id"]
    assert request.headers["content-type"] == "application/cloudevents+json"
    assert abs(int(request.headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60

    async def logged() -> list[dict[str, Any]]:
        return await log_of(client, integrator, created["id"])

    [entry] = await eventually(logged, lambda log: log and log[0]["status"] == "succeeded", what="the log")
    assert entry["event_id"] == event["id"] and entry["event_type"] == "itsm.incident.created"
    [attempt] = entry["attempts"]
    assert attempt["status_code"] == 200 and attempt["response"] == "ok" and attempt["error"] is None
    assert attempt["latency_ms"] >= 0 and entry["next_attempt_at"] is None


async def test_event_types_patterns_and_subjects(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor, receiver: Receiver, subject: str
) -> None:
    other = str(uuid.uuid4())
    subscriptions = {
        "exact": await subscribe(
            client,
            integrator,
            receiver.url("/m/exact"),
            event_types=["itsm.incident.created"],
            subjects=[subject, other],
        ),
        "entity": await subscribe(
            client, integrator, receiver.url("/m/entity"), event_types=["itsm.change.*"], subjects=[subject, other]
        ),
        "action": await subscribe(
            client, integrator, receiver.url("/m/action"), event_types=["itsm.*.created"], subjects=[subject, other]
        ),
        "all-of-one": await subscribe(
            client, integrator, receiver.url("/m/all"), event_types=["*"], subjects=[subject]
        ),
        "inactive": await subscribe(
            client, integrator, receiver.url("/m/off"), event_types=["*"], subjects=[subject], active=False
        ),
    }
    await inject(
        app,
        event_of("itsm.incident.created", subject),
        event_of("itsm.incident.updated", subject),
        event_of("itsm.change.created", other),
        event_of("itsm.sla_policy.updated", subject),
    )
    expected = {
        "exact": ["itsm.incident.created"],
        "entity": ["itsm.change.created"],
        "action": ["itsm.incident.created", "itsm.change.created"],
        "all-of-one": ["itsm.incident.created", "itsm.incident.updated", "itsm.sla_policy.updated"],
        "inactive": [],
    }
    for name, types in expected.items():
        log = await log_of(client, integrator, subscriptions[name]["id"])
        assert sorted(d["event_type"] for d in log) == sorted(types), name
    assert fanout.like_patterns(["itsm.sla_policy.*", "*"]) == ["itsm.sla\\_policy.%", "%"]


async def test_500_twice_then_200_is_three_attempts(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor, receiver: Receiver, path: str, subject: str
) -> None:
    receiver.script(path, Answer(500, body=b"boom"), Answer(500, body=b"boom"))
    created = await subscribe(client, integrator, receiver.url(path), subjects=[subject])
    event = event_of("itsm.incident.updated", subject)
    await inject(app, event)

    async def logged() -> list[dict[str, Any]]:
        return await log_of(client, integrator, created["id"])

    [entry] = await eventually(logged, lambda log: log and log[0]["status"] == "succeeded", what="3 attempts")
    assert [a["status_code"] for a in entry["attempts"]] == [500, 500, 200]
    assert [a["response"] for a in entry["attempts"]] == ["boom", "boom", "ok"]
    requests = receiver.received(path)
    assert len(requests) == 3 and {r.headers["webhook-id"] for r in requests} == {event["id"]}
    for request in requests:
        assert verified(created["secret"], request) == event


async def test_a_delivery_fails_after_the_schedule_and_is_retried_by_hand(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor, receiver: Receiver, path: str, subject: str
) -> None:
    receiver.script(path, *[Answer(503)] * 3)
    created = await subscribe(client, integrator, receiver.url(path), subjects=[subject])
    await inject(app, event_of("itsm.incident.updated", subject))

    async def logged() -> list[dict[str, Any]]:
        return await log_of(client, integrator, created["id"])

    [entry] = await eventually(logged, lambda log: log and log[0]["status"] == "failed", what="failed")
    assert len(entry["attempts"]) == 3  # the test schedule: 0, 0.3, 0.3 s
    assert (await log_of(client, integrator, created["id"], status="failed"))[0]["id"] == entry["id"]
    assert await log_of(client, integrator, created["id"], status="pending,succeeded") == []
    retry = f"/api/v1/webhooks/{created['id']}/deliveries/{entry['id']}/retry"
    retried = await client.post(retry, headers=integrator.headers)
    assert retried.status_code == 202 and retried.json()["status"] == "pending"
    [entry] = await eventually(logged, lambda log: log[0]["status"] == "succeeded", what="the retry")
    assert [a["status_code"] for a in entry["attempts"]] == [503, 503, 503, 200]
    unknown = f"/api/v1/webhooks/{created['id']}/deliveries/{uuid.uuid4()}/retry"
    assert (await client.post(unknown, headers=integrator.headers)).status_code == 404


async def test_410_gone_disables_the_subscription(
    client: httpx.AsyncClient,
    app: FastAPI,
    integrator: Actor,
    receiver: Receiver,
    path: str,
    subject: str,
    listen: Callable[..., Any],
) -> None:
    probe: EventProbe = await listen("webhook.#")
    receiver.script(path, Answer(410))
    created = await subscribe(client, integrator, receiver.url(path), subjects=[subject])
    await inject(app, event_of("itsm.incident.updated", subject))
    disabled = await probe.one(created["id"], "itsm.webhook.subscription_disabled")
    assert disabled["data"]["active"] is False and "410" in disabled["data"]["reason"]
    current = (await client.get(f"/api/v1/webhooks/{created['id']}", headers=integrator.headers)).json()
    assert current["active"] is False and "410" in current["disabled_reason"]
    [entry] = await log_of(client, integrator, created["id"])
    assert entry["status"] == "failed" and [a["status_code"] for a in entry["attempts"]] == [410]
    # Disabled, it takes no more events; a retry or replay is 409 until it is enabled again.
    await inject(app, event_of("itsm.incident.updated", subject))
    assert len(await log_of(client, integrator, created["id"])) == 1
    retry = f"/api/v1/webhooks/{created['id']}/deliveries/{entry['id']}/retry"
    assert (await client.post(retry, headers=integrator.headers)).status_code == 409
    enabled = await client.patch(f"/api/v1/webhooks/{created['id']}", headers=integrator.headers, json={"active": True})
    assert enabled.json()["active"] is True and enabled.json()["disabled_reason"] is None


async def test_an_endpoint_failing_too_long_is_disabled(
    client: httpx.AsyncClient,
    app: FastAPI,
    integrator: Actor,
    receiver: Receiver,
    path: str,
    subject: str,
    listen: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(get_settings(), "webhook_disable_after_seconds", 0.25)  # 5 days in production
    probe: EventProbe = await listen("webhook.#")
    receiver.script(path, *[Answer(500)] * 6)
    created = await subscribe(client, integrator, receiver.url(path), subjects=[subject])
    await inject(app, event_of("itsm.incident.updated", subject))
    disabled = await probe.one(created["id"], "itsm.webhook.subscription_disabled")
    assert "every attempt failed since" in disabled["data"]["reason"]
    [entry] = await log_of(client, integrator, created["id"])
    assert entry["status"] == "cancelled" and len(entry["attempts"]) == 2


async def test_timeouts_and_connection_errors_are_retried(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor, receiver: Receiver, path: str, subject: str
) -> None:
    receiver.script(path, Answer(200, delay=1.6))  # the test timeout is 1 s
    slow = await subscribe(client, integrator, receiver.url(path), subjects=[subject])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    dead = await subscribe(client, integrator, f"http://127.0.0.1:{closed_port}/x", subjects=[subject])
    await inject(app, event_of("itsm.incident.updated", subject))

    async def log(subscription: dict[str, Any]) -> list[dict[str, Any]]:
        return await log_of(client, integrator, subscription["id"])

    [entry] = await eventually(lambda: log(slow), lambda e: e and e[0]["status"] == "succeeded", timeout=15)
    first, second = entry["attempts"]
    assert first["status_code"] is None and first["error"].startswith("timeout") and second["status_code"] == 200
    [entry] = await eventually(lambda: log(dead), lambda e: e and e[0]["status"] == "failed", timeout=15)
    assert all(a["status_code"] is None and "ConnectError" in a["error"] for a in entry["attempts"])


async def test_redirects_are_not_followed(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor, receiver: Receiver, path: str, subject: str
) -> None:
    elsewhere = f"{path}/elsewhere"
    receiver.script(path, Answer(307, headers=(("Location", receiver.url(elsewhere)),)))
    created = await subscribe(client, integrator, receiver.url(path), subjects=[subject])
    await inject(app, event_of("itsm.incident.updated", subject))
    [entry] = await eventually(
        lambda: log_of(client, integrator, created["id"]), lambda e: e and e[0]["status"] == "succeeded"
    )
    assert [a["status_code"] for a in entry["attempts"]] == [307, 200]
    assert receiver.received(elsewhere) == []


async def test_a_slow_endpoint_does_not_delay_another(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor, receiver: Receiver, subject: str
) -> None:
    slow_path, fast_path = f"/slow/{subject}", f"/fast/{subject}"
    receiver.script(slow_path, *[Answer(200, delay=0.8)] * 12)
    await subscribe(client, integrator, receiver.url(slow_path), subjects=[subject])
    await subscribe(client, integrator, receiver.url(fast_path), subjects=[subject])
    await inject(app, *[event_of("itsm.incident.updated", subject) for _ in range(12)])
    await eventually(lambda: asyncio.sleep(0, len(receiver.received(fast_path))), lambda n: n == 12)
    # The slow one takes at most 4 at a time (the endpoint's cap), 0.8 s each: it is far from done.
    assert len(receiver.received(slow_path)) <= 8
    await eventually(lambda: asyncio.sleep(0, len(receiver.received(slow_path))), lambda n: n == 12, timeout=15)


async def test_replicas_share_the_deliveries(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor, receiver: Receiver, path: str, subject: str
) -> None:
    second = delivery.Dispatcher(app.state.runtime)  # a second replica on the same database
    running = asyncio.create_task(second.run())
    try:
        await subscribe(client, integrator, receiver.url(path), subjects=[subject])
        events = [event_of("itsm.incident.updated", subject) for _ in range(30)]
        await inject(app, *events)
        await eventually(lambda: asyncio.sleep(0, len(receiver.received(path))), lambda n: n >= 30)
        await asyncio.sleep(0.5)  # time for a duplicate to show
        ids = [r.headers["webhook-id"] for r in receiver.received(path)]
        assert sorted(ids) == sorted(e["id"] for e in events)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_claim_whose_replica_died_is_sent_again(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor, receiver: Receiver, path: str, subject: str
) -> None:
    created = await subscribe(client, integrator, receiver.url(path), subjects=[subject])
    event = event_of("itsm.incident.updated", subject)
    async with transaction(app.state.sessions) as session:
        await fanout.on_events(session, [fanout.parse(json.dumps(event).encode())])
        # As a claim leaves it: another replica took it until 1.5 s from now, then died.
        await session.execute(
            text("UPDATE delivery SET next_attempt_at = now() + interval '1.5 s' WHERE subscription_id = :s"),
            {"s": created["id"]},
        )
    await asyncio.sleep(0.8)
    assert receiver.received(path) == []
    [request] = await eventually(lambda: asyncio.sleep(0, receiver.received(path)))
    assert request.headers["webhook-id"] == event["id"]


async def test_during_a_rotation_both_secrets_sign(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor, receiver: Receiver, path: str, subject: str
) -> None:
    created = await subscribe(client, integrator, receiver.url(path), subjects=[subject])
    rotated = (await client.post(f"/api/v1/webhooks/{created['id']}/rotate-secret", headers=integrator.headers)).json()
    until = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert timedelta(hours=23, minutes=59) < until - datetime.now(UTC) <= timedelta(hours=24)
    event = event_of("itsm.incident.updated", subject)
    await inject(app, event)
    [request] = await eventually(lambda: asyncio.sleep(0, receiver.received(path)))
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verified(rotated["secret"], request) == event == verified(created["secret"], request)


async def test_replay_sends_the_stored_events_again(
    client: httpx.AsyncClient, app: FastAPI, integrator: Actor, receiver: Receiver, path: str, subject: str
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    events = [event_of("itsm.incident.created", subject), event_of("itsm.incident.updated", subject)]
    await inject(app, events[0], event_of("itsm.change.created", subject), events[1])
    created = await subscribe(client, integrator, receiver.url(path), subjects=[subject])
    replay = f"/api/v1/webhooks/{created['id']}/replay"
    answer = await client.post(replay, headers=integrator.headers, json={"since": before.isoformat()})
    assert answer.status_code == 202 and answer.json()["scheduled"] == 2
    requests = await eventually(lambda: asyncio.sleep(0, receiver.received(path)), lambda r: len(r) == 2)
    assert sorted(r.headers["webhook-id"] for r in requests) == sorted(e["id"] for e in events)
    assert all(d["replay"] for d in await log_of(client, integrator, created["id"]))
    old = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    assert (await client.post(replay, headers=integrator.headers, json={"since": old})).status_code == 422
    await client.patch(f"/api/v1/webhooks/{created['id']}", headers=integrator.headers, json={"active": False})
    assert (
        await client.post(replay, headers=integrator.headers, json={"since": before.isoformat()})
    ).status_code == 409


# ---------------------------------------------------------------- addresses checked at every attempt


async def test_an_address_that_turned_private_is_refused_at_delivery(
    client: httpx.AsyncClient,
    app: FastAPI,
    integrator: Actor,
    subject: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = {"rebind.example.test": ["93.184.216.34"]}

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    monkeypatch.setattr(ssrf, "resolve", resolver)
    monkeypatch.setattr(get_settings(), "webhook_allow_private_networks", False)
    created = await subscribe(client, integrator, "https://rebind.example.test/x", subjects=[subject])
    answers["rebind.example.test"] = ["127.0.0.1"]  # the name now points at this machine
    await inject(app, event_of("itsm.incident.updated", subject))
    [entry] = await eventually(
        lambda: log_of(client, integrator, created["id"]), lambda e: e and e[0]["attempts"], what="an attempt"
    )
    attempt = entry["attempts"][0]
    assert attempt["status_code"] is None
    assert attempt["error"] == "refused: host rebind.example.test resolves to 127.0.0.1, a loopback address"
    await client.patch(f"/api/v1/webhooks/{created['id']}", headers=integrator.headers, json={"active": False})


async def test_the_connection_goes_to_the_address_checked(
    app: FastAPI, receiver: Receiver, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once, its address checked, and the connection made to that address with the name in
    Host (and SNI): a second answer of the DNS (rebinding) is never used."""
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"] if len(lookups) == 1 else ["10.255.255.1"]

    # This machine's receiver stands in for a public address (and speaks plain http).
    monkeypatch.setattr(ssrf, "forbidden", lambda address: None if str(address) == "127.0.0.1" else "private")
    monkeypatch.setattr(ssrf, "SECURE_SCHEMES", ("https", "http"))
    sender = delivery.Sender(timeout=2, resolver=resolver)
    try:
        outcome = await sender.send(
            f"http://rebind.example.test:{receiver.port}{path}", b"{}", {"webhook-id": "x"}, allow_private=False
        )
    finally:
        await sender.aclose()
    assert outcome.status_code == 200, outcome
    assert lookups == ["rebind.example.test"]
    [request] = receiver.received(path)
    assert request.headers["host"] == f"rebind.example.test:{receiver.port}"

    async def local(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    [target] = await ssrf.targets("https://hooks.example.test:8443/x?a=1", allow_private=False, resolver=local)
    assert str(target.url) == "https://127.0.0.1:8443/x?a=1"
    assert target.headers == {"Host": "hooks.example.test:8443"}
    assert target.extensions == {"sni_hostname": "hooks.example.test"}
