"""Subscriptions over HTTP: roles and ownership, validation, the secret shown once and stored encrypted,
ETag/If-Match, Idempotency-Key, rotation, and the private-network refusal with the development setting off."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from itsm_shared.testing import EventProbe
from itsm_shared.testing_fixtures import Actor
from sqlalchemy import text
from webhook import ssrf
from webhook.config import get_settings

from .conftest import subscribe

URL = "https://hooks.example.test/itsm"


@pytest.fixture
def strict(monkeypatch: pytest.MonkeyPatch) -> None:
    """ITSM_WEBHOOK_ALLOW_PRIVATE_NETWORKS off, as in production."""
    monkeypatch.setattr(get_settings(), "webhook_allow_private_networks", False)


async def stored(app: FastAPI, sql: str, **params: Any) -> Any:
    async with app.state.sessions() as session:
        return (await session.execute(text(sql), params)).all()


async def test_create_returns_the_secret_once(
    client: httpx.AsyncClient, integrator: Actor, app: FastAPI, listen: Any
) -> None:
    probe: EventProbe = await listen("webhook.#")
    response = await client.post(
        "/api/v1/webhooks",
        headers=integrator.headers,
        json={"url": URL, "event_types": ["itsm.incident.created"], "description": "chat", "active": False},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"/api/v1/webhooks/{created['id']}"
    assert response.headers["etag"] == '"1"' and response.headers["cache-control"] == "no-store"
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert created["owner_id"] == str(integrator.id) and created["active"] is False

    fetched = await client.get(f"/api/v1/webhooks/{created['id']}", headers=integrator.headers)
    assert fetched.status_code == 200 and "secret" not in fetched.json() and fetched.headers["etag"] == '"1"'
    listed = (await client.get("/api/v1/webhooks", headers=integrator.headers)).json()
    assert [s["id"] for s in listed["items"]] == [created["id"]] and "secret" not in listed["items"][0]

    # At rest the secret is encrypted, never in clear (neither in its row nor anywhere else).
    [(column,)] = await stored(app, "SELECT secret FROM subscription WHERE id = :id", id=created["id"])
    assert column.startswith("wsk1:") and secret not in column
    found = await stored(app, "SELECT count(*) FROM idempotency_key WHERE body::text LIKE :s", s=f"%{secret}%")
    assert found == [(0,)]

    event = await probe.one(created["id"], "itsm.webhook.subscription_created")
    assert event["data"]["endpoint"] == "https://hooks.example.test"
    assert "url" not in event["data"] and "secret" not in event["data"]


async def test_idempotency_key_replays_the_create_with_its_secret(
    client: httpx.AsyncClient, integrator: Actor, app: FastAPI
) -> None:
    headers = {**integrator.headers, "Idempotency-Key": uuid.uuid4().hex}
    body = {"url": URL, "event_types": ["*"], "active": False}
    first = await client.post("/api/v1/webhooks", headers=headers, json=body)
    again = await client.post("/api/v1/webhooks", headers=headers, json=body)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    found = await stored(app, "SELECT count(*) FROM idempotency_key WHERE body::text LIKE :s", s="%whsec_%")
    assert found == [(0,)]  # the remembered answer holds the secret sealed
    other = await client.post("/api/v1/webhooks", headers=headers, json={**body, "description": "x"})
    assert other.status_code == 422


async def test_roles_and_ownership(client: httpx.AsyncClient, actor: Any, admin: Actor, agent: Actor) -> None:
    owner, other = actor("integrator"), actor("integrator")
    created = await subscribe(client, owner, URL, active=False)
    path = f"/api/v1/webhooks/{created['id']}"

    body = {"url": URL, "event_types": ["*"]}
    assert (await client.post("/api/v1/webhooks", headers=agent.headers, json=body)).status_code == 403
    assert (await client.get("/api/v1/webhooks", headers=agent.headers)).status_code == 403
    assert (await client.get("/api/v1/webhooks")).status_code == 401
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"description": "mine now"}),
        ("DELETE", "", None),
        ("POST", "/rotate-secret", None),
        ("GET", "/deliveries", None),
        ("POST", "/replay", {"since": "2026-01-01T00:00:00Z"}),
        ("POST", f"/deliveries/{uuid.uuid4()}/retry", None),
    ):
        response = await client.request(method, path + suffix, headers=other.headers, json=body)
        assert response.status_code == 404, (method, suffix, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert created["id"] not in [
        s["id"] for s in (await client.get("/api/v1/webhooks", headers=other.headers)).json()["items"]
    ]

    # An admin manages everyone's.
    assert (await client.get(path, headers=admin.headers)).status_code == 200
    ids = [s["id"] for s in (await client.get("/api/v1/webhooks?limit=200", headers=admin.headers)).json()["items"]]
    assert created["id"] in ids
    patched = await client.patch(path, headers=admin.headers, json={"description": "by the admin"})
    assert patched.status_code == 200 and patched.json()["owner_id"] == str(owner.id)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": URL, "event_types": []}, "event_types"),
        ({"url": URL}, "event_types"),
        ({"url": URL, "event_types": ["incident.created"]}, "event_types"),
        ({"url": URL, "event_types": ["itsm.incident.cre*"]}, "event_types"),
        ({"url": URL, "event_types": ["*"], "subjects": []}, "subjects"),
        ({"url": URL, "event_types": ["*"], "secret": "whsec_AAAA"}, None),
        ({"url": URL, "event_types": ["*"], "color": "red"}, "color"),
        ({"url": "ftp://files.example.test/x", "event_types": ["*"]}, "url"),
        ({"url": "https://user:pw@hooks.example.test/x", "event_types": ["*"]}, "url"),
        ({"url": "not a url", "event_types": ["*"]}, "url"),
    ],
)
async def test_invalid_bodies_are_422(
    client: httpx.AsyncClient, integrator: Actor, body: dict[str, Any], field: str | None
) -> None:
    response = await client.post("/api/v1/webhooks", headers=integrator.headers, json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json" and problem["status"] == 422
    if field:
        assert any(field in [str(part) for part in e["loc"]] for e in problem["errors"]), problem


async def test_typed_parameters(client: httpx.AsyncClient, integrator: Actor) -> None:
    assert (await client.get("/api/v1/webhooks/not-a-uuid", headers=integrator.headers)).status_code == 422
    assert (await client.get("/api/v1/webhooks?limit=0", headers=integrator.headers)).status_code == 422
    assert (await client.get("/api/v1/webhooks?sort=url", headers=integrator.headers)).status_code == 422
    created = await subscribe(client, integrator, URL, active=False)
    deliveries = f"/api/v1/webhooks/{created['id']}/deliveries"
    assert (await client.get(f"{deliveries}?status=lost", headers=integrator.headers)).status_code == 422
    assert (await client.get(f"{deliveries}?event_id=x", headers=integrator.headers)).status_code == 422
    replay = f"/api/v1/webhooks/{created['id']}/replay"
    naive = await client.post(replay, headers=integrator.headers, json={"since": "2026-01-01T00:00:00"})
    assert naive.status_code == 422


async def test_keyset_pages(client: httpx.AsyncClient, actor: Any) -> None:
    who = actor("integrator")
    made = [(await subscribe(client, who, URL, active=False))["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(f"/api/v1/webhooks?{query}", headers=who.headers)).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))


async def test_patch_and_delete_honour_if_match(client: httpx.AsyncClient, integrator: Actor, listen: Any) -> None:
    probe: EventProbe = await listen("webhook.#")
    created = await subscribe(client, integrator, URL, active=False)
    path = f"/api/v1/webhooks/{created['id']}"
    stale = await client.patch(path, headers={**integrator.headers, "If-Match": '"7"'}, json={"description": "x"})
    assert stale.status_code == 412
    ok = await client.patch(
        path,
        headers={**integrator.headers, "If-Match": '"1"'},
        json={"description": "paging", "event_types": ["itsm.change.*"], "subjects": ["a"], "url": URL + "/v2"},
    )
    assert ok.status_code == 200 and ok.headers["etag"] == '"2"'
    assert ok.json()["event_types"] == ["itsm.change.*"] and ok.json()["subjects"] == ["a"]
    updated = await probe.one(created["id"], "itsm.webhook.subscription_updated")
    assert "url" not in updated["data"]["changes"] and "event_types" in updated["data"]["changes"]
    cleared = await client.patch(path, headers=integrator.headers, json={"subjects": None})
    assert cleared.json()["subjects"] is None
    assert (await client.patch(path, headers=integrator.headers, json={"event_types": None})).status_code == 422
    assert (await client.patch(path, headers=integrator.headers, json={"version": 9})).status_code == 422

    gone = await client.delete(path, headers={**integrator.headers, "If-Match": '"1"'})
    assert gone.status_code == 412
    assert (await client.delete(path, headers={**integrator.headers, "If-Match": '"3"'})).status_code == 204
    assert (await client.get(path, headers=integrator.headers)).status_code == 404
    await probe.one(created["id"], "itsm.webhook.subscription_deleted")


async def test_rotation_returns_a_new_secret_once(client: httpx.AsyncClient, integrator: Actor) -> None:
    created = await subscribe(client, integrator, URL, active=False)
    path = f"/api/v1/webhooks/{created['id']}"
    rotated = await client.post(f"{path}/rotate-secret", headers=integrator.headers)
    assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"
    body = rotated.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != created["secret"]
    assert body["version"] == 2 and rotated.headers["etag"] == '"2"'
    fetched = (await client.get(path, headers=integrator.headers)).json()
    assert fetched["previous_secret_expires_at"] == body["previous_secret_expires_at"]
    assert "secret" not in fetched


# ---------------------------------------------------------------- private networks (the setting off)


@pytest.mark.usefixtures("strict")
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.test/x", "must be https"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://localhost:8443/x", "loopback"),
        ("https://10.1.2.3/x", "private"),
        ("https://192.168.0.10/x", "private"),
        ("https://172.16.5.4/x", "private"),
        ("https://100.64.0.1/x", "not a public address"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://[fd00:ec2::254]/x", "metadata"),
        ("https://100.100.100.200/x", "metadata"),
        ("https://[::1]/x", "loopback"),
        ("https://[::ffff:127.0.0.1]/x", "loopback"),
        ("https://224.0.0.1/x", "multicast"),
        ("https://0.0.0.0/x", "unspecified"),
        ("https://240.0.0.1/x", "reserved"),
        ("https://[fe80::1]/x", "link-local"),
    ],
)
async def test_private_addresses_are_refused(
    client: httpx.AsyncClient, integrator: Actor, url: str, reason: str
) -> None:
    response = await client.post(
        "/api/v1/webhooks", headers=integrator.headers, json={"url": url, "event_types": ["*"]}
    )
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"], response.json()
    assert response.json()["errors"][0]["loc"] == ["body", "url"]


@pytest.mark.usefixtures("strict")
async def test_a_name_resolving_to_a_private_address_is_refused(
    client: httpx.AsyncClient, integrator: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return {"public.example.test": ["93.184.216.34"], "sneaky.example.test": ["93.184.216.34", "10.0.0.7"]}[host]

    monkeypatch.setattr(ssrf, "resolve", resolver)
    refused = await client.post(
        "/api/v1/webhooks",
        headers=integrator.headers,
        json={"url": "https://sneaky.example.test/x", "event_types": ["*"]},
    )
    assert refused.status_code == 422 and "10.0.0.7" in refused.json()["detail"]
    # A public one is taken (inactive: nothing is ever sent off this machine), and PATCHed to a private one, refused.
    created = await subscribe(client, integrator, "https://public.example.test/x", active=False)
    patched = await client.patch(
        f"/api/v1/webhooks/{created['id']}", headers=integrator.headers, json={"url": "https://sneaky.example.test/y"}
    )
    assert patched.status_code == 422


async def test_the_development_setting_allows_private_http(client: httpx.AsyncClient, integrator: Actor) -> None:
    created = await subscribe(client, integrator, "http://127.0.0.1:9/x", active=False)
    assert created["url"] == "http://127.0.0.1:9/x"
