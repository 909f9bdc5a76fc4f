"""Issue #4 through the real gateway: what users do in the auth service shows up in the audit log, read by an
auditor; other roles are refused; the chain verifies; the export verifies on its own."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import httpx
from itsm_shared.testing import eventually

from .conftest import bearer, token

PASSWORD = "a perfectly fine password"


async def user_with(http: httpx.AsyncClient, admin: str, roles: list[str]) -> tuple[str, str]:
    """(user id, access token) of a new user with `roles`."""
    username = f"e2eaudit{uuid.uuid4().hex[:8]}"
    created = await http.post(
        "/api/v1/auth/users", headers=bearer(admin), json={"username": username, "password": PASSWORD, "roles": roles}
    )
    assert created.status_code == 201, created.text
    return created.json()["id"], (await token(http, username, PASSWORD))["access_token"]


async def audit_of(http: httpx.AsyncClient, auditor: str, timeout: float = 15, **params: Any) -> list[dict[str, Any]]:
    response = await http.get("/api/v1/audit/events", headers=bearer(auditor), params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def wait_for(
    http: httpx.AsyncClient, auditor: str, want: set[str], timeout: float = 15, **params: Any
) -> list[dict[str, Any]]:
    return await eventually(
        lambda: audit_of(http, auditor, **params),
        lambda items: want <= {i["type"] for i in items},
        timeout=timeout,
        interval=0.1,
        what=f"{sorted(want)} in the audit log",
    )


async def test_auth_actions_appear_in_the_audit_log(http: httpx.AsyncClient, admin: str) -> None:
    _, auditor = await user_with(http, admin, ["auditor"])
    user_id, _ = await user_with(http, admin, ["agent"])  # created, then logged in
    items = await wait_for(http, auditor, {"itsm.auth.user_created", "itsm.auth.login_succeeded"}, subject=user_id)
    by_type = {i["type"]: i for i in items}
    created = by_type["itsm.auth.user_created"]
    assert created["source"] == "/itsm/auth" and created["specversion"] == "1.0"
    assert created["data"]["id"] == user_id and "password_hash" not in created["data"]
    assert created["actorid"] != user_id  # the admin did it
    assert by_type["itsm.auth.login_succeeded"]["actorid"] == user_id
    assert items[0]["seq"] > items[-1]["seq"]  # newest first
    for item in items:
        assert len(item["hash"]) == 64 and len(item["prev_hash"]) == 64 and item["received_at"].endswith("Z")
    prefixed = await audit_of(http, auditor, subject=user_id, type="auth.*")
    assert {i["id"] for i in prefixed} == {i["id"] for i in items}


async def test_other_roles_are_refused(http: httpx.AsyncClient, admin: str) -> None:
    _, agent = await user_with(http, admin, ["agent"])
    for path in ("/api/v1/audit/events", "/api/v1/audit/verify", "/api/v1/audit/export"):
        response = await http.get(path, headers=bearer(agent))
        assert response.status_code == 403, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert (await http.get("/api/v1/audit/events")).status_code == 401


async def test_the_chain_verifies_and_the_export_verifies_on_its_own(http: httpx.AsyncClient, admin: str) -> None:
    _, auditor = await user_with(http, admin, ["auditor"])
    await wait_for(http, auditor, {"itsm.auth.login_succeeded"})
    full = await http.get("/api/v1/audit/verify", headers=bearer(auditor), params={"full": "true"})
    assert full.status_code == 200, full.text
    assert full.json()["ok"] is True and full.json()["first_bad_seq"] is None and full.json()["checked"] >= 2
    incremental = (await http.get("/api/v1/audit/verify", headers=bearer(auditor))).json()
    assert incremental["ok"] is True and incremental["from_seq"] == full.json()["last_seq"] + 1
    export = await http.get("/api/v1/audit/export", headers=bearer(auditor))
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert lines and lines[0]["seq"] == 1 and lines[0]["prev_hash"] == "0" * 64
    prev = "0" * 64
    for line in lines:  # the README's recipe, nothing of the service's code
        record = {k: line[k] for k in ("seq", "event_id", "received_at", "event")}
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert line["prev_hash"] == prev
        assert hashlib.sha256((prev + canonical).encode()).hexdigest() == line["hash"]
        prev = line["hash"]
