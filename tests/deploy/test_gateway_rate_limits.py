"""The gateway's rate limits and in-flight cap (gateway_support.py: `gateway` and `strict`).

These tests assert only what a token bucket guarantees whatever the timing: a fresh bucket lets its burst
through, and in `elapsed` seconds it never lets more through than the burst plus what it refilled (Traefik
also serves a request whose token is due within a short delay, 1/(2*rate) s or at most 0.5 s, hence one
token of slack). A request loop that is not throttled keeps sending until the first 429, bounded.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from gateway_support import Gateway, assert_security_headers, until_429, wait_for

pytestmark = pytest.mark.timeout(120)


def most_allowed(burst: int, per_second: float, elapsed: float) -> float:
    """The most requests a token bucket lets through in `elapsed` seconds from full (one token of slack)."""
    return burst + per_second * elapsed + 1


def test_api_limit_comes_from_the_environment(gateway: Gateway, strict: Gateway) -> None:
    # ITSM_API_RATE_LIMIT=1000 (burst 2000): 30 requests all pass, however slowly they go.
    with gateway.client() as client:
        assert {client.get("/api/v1/sla-policies").status_code for _ in range(30)} == {200}

    # ITSM_API_RATE_LIMIT=5 (burst 10), on a bucket of its own (this router, this client address).
    with strict.client("127.0.0.6") as client:
        responses, elapsed = until_429(lambda: client.get("/api/v1/incidents/x"), limit=500)
    statuses = [r.status_code for r in responses]
    assert statuses[:10] == [200] * 10, "the burst of a fresh bucket"
    assert statuses[-1] == 429, f"no 429 in {len(statuses)} requests in {elapsed:.1f}s"
    assert set(statuses[:-1]) == {200}
    assert statuses.count(200) <= most_allowed(10, 5, elapsed), (statuses.count(200), elapsed)
    limited = responses[-1]
    assert int(limited.headers["retry-after"]) >= 1
    assert_security_headers(limited)

    # Per client: another address has a full bucket of its own on the same route.
    with strict.client("127.0.0.2") as other:
        assert other.get("/api/v1/incidents/x").status_code == 200


def test_login_has_its_own_strict_bucket(strict: Gateway) -> None:
    form = {"grant_type": "password", "username": "admin", "password": "wrong-password"}
    with strict.client() as client:
        # ITSM_LOGIN_RATE_LIMIT=10 per minute, burst 5.
        responses, elapsed = until_429(lambda: client.post("/api/v1/auth/token", data=form), limit=50)
        statuses = [r.status_code for r in responses]
        assert statuses[:5] == [200] * 5, "the burst of a fresh bucket"
        assert statuses[-1] == 429, (statuses, elapsed)
        assert statuses.count(200) <= most_allowed(5, 10 / 60, elapsed), (statuses, elapsed)
        refused = responses[-1]
        assert int(refused.headers["retry-after"]) >= 1
        assert_security_headers(refused)
        # The rest of the auth API is not throttled with it (its own bucket, full: burst 10).
        assert client.get("/api/v1/auth/me").status_code == 200
    # Another client can still log in.
    with strict.client("127.0.0.3") as other:
        assert other.post("/api/v1/auth/token", data=form).status_code == 200


def test_in_flight_cap_is_per_client(strict: Gateway) -> None:
    change = strict.stubs["change"]
    change.release.clear()
    with strict.client() as client, ThreadPoolExecutor(max_workers=2) as pool:
        held = [pool.submit(client.get, "/api/v1/changes/hold") for _ in range(2)]
        try:
            wait_for(lambda: change.holding() == 2)
            third = client.get("/api/v1/changes/x")
            assert third.status_code == 429
            assert_security_headers(third)
            with strict.client("127.0.0.4") as other:
                assert other.get("/api/v1/changes/x").status_code == 200
        finally:
            change.release.set()
        assert [f.result(timeout=15).status_code for f in held] == [200, 200]
