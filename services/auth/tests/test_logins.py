"""Issue #11, findings 3 and 4, as attacks on the running app: locking the owner out, queueing logins on the user's
row, exhausting memory with Argon2, unbounded form fields, and raw names of unknown users in the audit trail."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from auth import security
from fastapi import FastAPI
from itsm_shared.testing import Listen
from sqlalchemy import text

from .conftest import LOGIN_DELAY_SECONDS, admin_token, bearer, login
from .test_router import PASSWORD, make_user

WRONG = "wrong password here"
DELAY = float(LOGIN_DELAY_SECONDS)


def address() -> str:
    """A client address of a test's own, so tests never share a throttle."""
    value = uuid.uuid4().int
    return f"10.{value % 250}.{value // 250 % 250}.{value // 62500 % 250 + 1}"


async def throttle_rows(app: FastAPI, username: str) -> list[Any]:
    async with app.state.sessions() as session:
        result = await session.execute(
            text(
                "SELECT client_address, failures, extract(epoch FROM blocked_until - now())::float AS wait "
                "FROM login_throttle WHERE account_key = :key ORDER BY client_address"
            ),
            {"key": security.username_key(username)},
        )
        return list(result.all())


async def unblock(app: FastAPI, username: str) -> None:
    """Time passes: the address's wait is over (the failures are still counted)."""
    async with app.state.sessions() as session:
        await session.execute(
            text("UPDATE login_throttle SET blocked_until = now() - interval '1 second' WHERE account_key = :key"),
            {"key": security.username_key(username)},
        )
        await session.commit()


# ---------------------------------------------------------------- finding 3: throttling, not a lock


async def test_failures_from_one_address_do_not_lock_the_owner_out(client: httpx.AsyncClient, app: FastAPI) -> None:
    user = await make_user(client, ["agent"])
    name = str(user["username"])
    attacker, owner = address(), address()
    for _ in range(5):
        assert (await login(client, name, WRONG, address=attacker)).status_code == 400
    # The attacker's address now waits (1 s by default, a minute in these tests) before any attempt is even
    # checked, the right password too ...
    refused = await login(client, name, PASSWORD, address=attacker)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    # ... while the owner, from elsewhere, gets in (the old lock refused the owner for 15 minutes).
    assert (await login(client, name, PASSWORD, address=owner)).status_code == 200
    [row] = await throttle_rows(app, name)
    assert row.client_address == attacker and row.failures == 5 and 0 < row.wait <= DELAY


async def test_delays_grow_with_each_failure_up_to_the_cap(client: httpx.AsyncClient, app: FastAPI) -> None:
    user = await make_user(client, ["agent"])
    name, attacker = str(user["username"]), address()
    for _ in range(4):
        await login(client, name, WRONG, address=attacker)
    assert (await throttle_rows(app, name))[0].wait is None  # four failures: no delay yet
    waits = []
    for _ in range(4):
        await unblock(app, name)
        assert (await login(client, name, WRONG, address=attacker)).status_code == 400
        waits.append((await throttle_rows(app, name))[0].wait)
    assert [round(w / DELAY) for w in waits] == [1, 2, 4, 8]
    async with app.state.sessions() as session:  # many failures later: capped
        await session.execute(
            text("UPDATE login_throttle SET failures = 60, blocked_until = NULL WHERE account_key = :key"),
            {"key": security.username_key(name)},
        )
        await session.commit()
    await login(client, name, WRONG, address=attacker)
    assert 14 * 60 < (await throttle_rows(app, name))[0].wait <= 15 * 60
    await unblock(app, name)
    # Once the wait is over the address is checked again; a success clears its failures.
    assert (await login(client, name, PASSWORD, address=attacker)).status_code == 200
    assert await throttle_rows(app, name) == []


async def test_an_admin_can_unlock(client: httpx.AsyncClient, app: FastAPI, listen: Listen) -> None:
    user = await make_user(client, ["agent"])
    name, attacker = str(user["username"]), address()
    probe = await listen("auth.user_unlocked")
    for _ in range(6):
        await login(client, name, WRONG, address=attacker)
    admin = await admin_token(client)
    path = f"/api/v1/auth/users/{user['id']}"
    assert (await client.get(path, headers=bearer(admin))).json()["locked"] is True
    listed = (await client.get("/api/v1/auth/users?limit=200", headers=bearer(admin))).json()["items"]
    assert next(u for u in listed if u["id"] == user["id"])["locked"] is True
    # Not for anyone but an admin.
    agent = (await login(client, name, PASSWORD, address=address())).json()["access_token"]
    assert (await client.post(f"{path}/unlock", headers=bearer(agent))).status_code == 403
    unlocked = await client.post(f"{path}/unlock", headers=bearer(admin))
    assert unlocked.status_code == 200 and unlocked.json()["locked"] is False
    assert await throttle_rows(app, name) == []
    assert (await login(client, name, PASSWORD, address=attacker)).status_code == 200
    event = await probe.one(user["id"], "auth.user_unlocked")
    assert event["data"]["addresses"] == 1
    assert (await client.post(f"/api/v1/auth/users/{uuid.uuid4()}/unlock", headers=bearer(admin))).status_code == 404


async def test_unknown_names_are_throttled_like_accounts(client: httpx.AsyncClient, app: FastAPI) -> None:
    """No enumeration through the throttle: a name that is no account is delayed exactly like one that is."""
    known = str((await make_user(client, ["agent"]))["username"])
    unknown = f"nobody{uuid.uuid4().hex[:8]}"
    attacker = address()
    answers: dict[str, list[tuple[int, str]]] = {known: [], unknown: []}
    for name in (known, unknown):
        for _ in range(6):
            response = await login(client, name, WRONG, address=attacker)
            answers[name].append((response.status_code, response.text))
    assert answers[known] == answers[unknown]
    assert [r.failures for r in await throttle_rows(app, known)] == [5]  # the sixth was not even checked
    assert [r.failures for r in await throttle_rows(app, unknown)] == [5]


async def test_the_gateway_reported_address_is_the_rightmost_forwarded_entry(client: httpx.AsyncClient) -> None:
    """A client cannot pick its address: Traefik appends the peer it saw, and that entry is the one counted."""
    user = await make_user(client, ["agent"])
    name, real = str(user["username"]), address()
    for _ in range(5):
        spoofed = f"{address()}, {real}"  # a different forged first entry each time
        await login(client, name, WRONG, address=spoofed)
    assert (await login(client, name, PASSWORD, address=real)).status_code == 400
    assert (await login(client, name, PASSWORD, address=f"{real}, {address()}")).status_code == 200


def test_client_address_normalisation() -> None:
    from auth.tokens import client_address

    assert client_address("1.2.3.4, 10.0.0.1", "127.0.0.1", 1) == "10.0.0.1"
    assert client_address("1.2.3.4, 10.0.0.1", "127.0.0.1", 2) == "1.2.3.4"
    assert client_address(None, "127.0.0.1", 1) == "127.0.0.1"
    assert client_address("2001:db8:1:2:3:4:5:6", None, 1) == "2001:db8:1:2::/64"
    assert client_address("::ffff:192.0.2.1", None, 1) == "192.0.2.1"
    assert client_address("x" * 500, None, 1) == "x" * 64


# ---------------------------------------------------------------- finding 3: no row lock while hashing, capped Argon2


class SlowHasher:
    """Stands in for the password hasher: each check takes `seconds` (asleep, so the machine's load does not
    matter) and fails; counts the checks running at once."""

    def __init__(self, real: Any, seconds: float) -> None:
        self.real, self.seconds = real, seconds
        self.running = self.most = 0
        self.lock = threading.Lock()

    def verify_and_update(self, password: str, stored: str) -> tuple[bool, str | None]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.seconds)
            return False, None
        finally:
            with self.lock:
                self.running -= 1

    def hash(self, password: str) -> str:
        return str(self.real.hash(password))


@pytest.fixture
def slow_hashing(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], SlowHasher]:
    def install(seconds: float) -> SlowHasher:
        hasher = SlowHasher(security._hasher, seconds)
        monkeypatch.setattr(security, "_hasher", hasher)
        return hasher

    return install


@pytest.fixture
async def hashing_slots() -> AsyncIterator[Callable[..., security.HashingSlots]]:
    def use(concurrency: int, queue: int, wait_seconds: float = 10.0) -> security.HashingSlots:
        slots = security.HashingSlots(concurrency, queue, wait_seconds)
        security.use_hashing_slots(slots)
        return slots

    yield use
    security.use_hashing_slots(None)


async def test_parallel_attempts_do_not_queue_on_the_user_row(
    client: httpx.AsyncClient, slow_hashing: Callable[[float], SlowHasher], hashing_slots: Callable[..., Any]
) -> None:
    """Each check holding the user's row lock made parallel attempts wait for each other (and, past the statement
    timeout, answer 500). Now they hash side by side and each answers 400."""
    user = await make_user(client, ["agent"])
    hashing_slots(8, 8)
    seen = slow_hashing(0.6)
    started = time.monotonic()
    answers = await asyncio.gather(*(login(client, str(user["username"]), WRONG, address=address()) for _ in range(6)))
    elapsed = time.monotonic() - started
    assert [r.status_code for r in answers] == [400] * 6
    assert seen.most >= 3, seen.most  # they really ran side by side
    assert elapsed < 2.4, f"serialised on the row lock: {elapsed:.1f}s for 6 checks of 0.6s"


async def test_argon2_work_is_capped_and_a_full_queue_answers_503(
    client: httpx.AsyncClient, slow_hashing: Callable[[float], SlowHasher], hashing_slots: Callable[..., Any]
) -> None:
    """A flood of logins: at most `concurrency` hashes at once (64 MiB each), `queue` more wait, the rest get 503
    with Retry-After at once instead of piling up."""
    hashing_slots(1, 2)
    seen = slow_hashing(1.0)
    names = [f"flood{uuid.uuid4().hex[:8]}" for _ in range(10)]
    answers = await asyncio.gather(*(login(client, name, WRONG, address=address()) for name in names))
    statuses = [r.status_code for r in answers]
    assert seen.most == 1, seen.most
    assert set(statuses) == {400, 503} and statuses.count(400) >= 3, statuses  # one hashing, two waiting
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.headers["content-type"] == "application/problem+json"


async def test_a_slot_waited_for_too_long_is_503(
    client: httpx.AsyncClient, slow_hashing: Callable[[float], SlowHasher], hashing_slots: Callable[..., Any]
) -> None:
    hashing_slots(1, 10, wait_seconds=0.3)
    slow_hashing(1.5)
    answers = await asyncio.gather(
        *(login(client, f"w{uuid.uuid4().hex[:8]}", WRONG, address=address()) for _ in range(3))
    )
    assert sorted(r.status_code for r in answers) == [400, 503, 503]


# ---------------------------------------------------------------- finding 4: bounded fields, no raw unknown names

TOKEN = "/api/v1/auth/token"


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"grant_type": "password", "username": "u" * 65, "password": PASSWORD}, "username"),
        ({"grant_type": "password", "username": "someone", "password": "p" * 257}, "password"),
        ({"grant_type": "refresh_token", "refresh_token": "r" * 257}, "refresh_token"),
        ({"grant_type": "client_credentials", "client_id": "c" * 65, "client_secret": "s"}, "client_id"),
        ({"grant_type": "client_credentials", "client_id": "c", "client_secret": "s" * 257}, "client_secret"),
        ({"grant_type": "password", "username": "a", "password": "b", "scope": "s" * 1025}, "scope"),
        ({"grant_type": "g" * 65}, "grant_type"),
    ],
)
async def test_token_form_fields_are_bounded(client: httpx.AsyncClient, form: dict[str, str], field: str) -> None:
    response = await client.post(TOKEN, data=form, headers={"X-Forwarded-For": address()})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["body", field]


async def test_revoke_form_fields_are_bounded(client: httpx.AsyncClient) -> None:
    for form in ({"token": "t" * 4097}, {"token": "t", "token_type_hint": "h" * 65}):
        response = await client.post("/api/v1/auth/revoke", data=form)
        assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    # The longest legitimate values still pass: a 64-character name, a 256-character password.
    assert (await login(client, "n" * 64, "p" * 256, address=address())).status_code == 400


async def test_an_unknown_name_is_recorded_only_as_a_keyed_hash(
    client: httpx.AsyncClient, app: FastAPI, listen: Listen
) -> None:
    """Someone types their password into the username box: neither the event (kept forever by the audit log)
    nor the throttle table holds it."""
    probe = await listen("auth.login_failed")
    typed = f"Tr0ub4dor&3-{uuid.uuid4().hex[:12]}"
    assert (await login(client, typed, WRONG, address=address())).status_code == 400
    digest = security.username_key(typed)
    [event] = await probe.wait(where=lambda e: e["data"].get("username_hmac") == digest)
    assert typed not in probe.message_of(event).body.decode()
    assert event["data"]["username"] is None and event["data"]["reason"] == "unknown_user"
    assert len(digest) == 64 and digest != security.token_digest(typed)  # keyed: not a plain hash of the name
    async with app.state.sessions() as session:
        dump = (await session.execute(text("SELECT string_agg(t::text, ' ') FROM login_throttle t"))).scalar()
    assert typed not in (dump or "")
