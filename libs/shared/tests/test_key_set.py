"""The refreshing key set (JWKSCache): when it reloads the issuer's JWKS, what it does while the issuer is slow or
down, and how a withdrawn key or a revoked subject stops verifying."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from itsm_shared.auth import (
    JWKSCache,
    Principal,
    TokenVerifier,
    subject_digest,
)
from itsm_shared.errors import Unauthorized, Unavailable
from itsm_shared.testing import eventually

from .jwks_support import AUDIENCE, ISSUER, JWKS_URL, HangingJWKS, JWKSServer, SigningKey, claims, rejected, sign


async def _now(value: bool) -> bool:
    """A condition already evaluated, as the awaitable probe itsm_shared.testing.eventually takes."""
    return value


async def test_unknown_kid_refetches_at_most_once_per_window(
    verifier: TokenVerifier, key: SigningKey, server: JWKSServer, cache: JWKSCache
) -> None:
    await verifier.verify(sign(key, claims()))
    assert server.fetches == 1
    forged = [sign(SigningKey(f"forged-{n}"), claims()) for n in range(20)]
    # Right after a fetch: a flood of unknown kids costs nothing.
    for error in await asyncio.gather(*(verifier.verify(t) for t in forged), return_exceptions=True):
        assert isinstance(error, Unauthorized)
    assert server.fetches == 1

    async def window_passed() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() - cache._attempted_at < cache.retry_delay():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    # After the window: the same flood, concurrently, costs exactly one fetch.
    await window_passed()
    for error in await asyncio.gather(*(verifier.verify(t) for t in forged), return_exceptions=True):
        assert isinstance(error, Unauthorized)
    assert server.fetches == 2

    # Key rotation: a new kid published by the issuer is picked up by that refetch.
    rotated = SigningKey("k2")
    server.keys.append(rotated)
    await window_passed()
    principal = await verifier.verify(sign(rotated, claims()))
    assert isinstance(principal, Principal)
    assert server.fetches == 3
    await verifier.verify(sign(key, claims()))  # the old key still verifies
    assert server.fetches == 3


async def test_a_key_rotated_in_just_after_a_background_reload_verifies_at_its_first_token(
    key: SigningKey, server: JWKSServer
) -> None:
    """The e2e failure of 2026-11-29: the periodic reload ran, the issuer rotated, the first token of the new key
    came within the refetch window and was refused as 'unknown signing key' until the next reload."""
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    async with JWKSCache(JWKS_URL, client=client, refresh_seconds=60, min_refetch_seconds=10, autostart=False) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        assert await cache.refresh()  # what the background loop does every refresh interval
        rotated = SigningKey("k2")
        server.keys.append(rotated)
        assert isinstance(await verifier.verify(sign(rotated, claims())), Principal)
        assert server.fetches == 2
        # A forged kid right after it still costs nothing: that reload was asked for by an unknown kid.
        await rejected(verifier, sign(SigningKey("forged"), claims()))
        assert server.fetches == 2


async def test_a_key_rotated_in_seconds_after_the_first_load_verifies_at_its_first_token(
    key: SigningKey, server: JWKSServer
) -> None:
    """The e2e failure of 2026-11-29, second form: the first token loaded the keys (a reload an unknown kid asked
    for), the issuer rotated a few seconds later, and the new key's first token was refused as 'unknown signing
    key' for the rest of a 10 s window. With the default window of 1 s it is fetched."""
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    async with JWKSCache(JWKS_URL, client=client, autostart=False) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        assert isinstance(await verifier.verify(sign(key, claims())), Principal)  # loads: k1 was unknown
        await asyncio.sleep(1.1)
        rotated = SigningKey("k2")
        server.keys.append(rotated)
        assert isinstance(await verifier.verify(sign(rotated, claims())), Principal)
        assert server.fetches == 2


async def test_issuer_unreachable(key: SigningKey) -> None:
    server = JWKSServer(key)
    server.down = True
    async with JWKSCache(JWKS_URL, client=httpx.AsyncClient(transport=httpx.MockTransport(server.handler))) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        with pytest.raises(Unavailable):  # 503: no keys at all is the issuer's fault, not the token's
            await verifier.verify(sign(key, claims()))


async def test_keys_survive_a_failed_refetch(
    verifier: TokenVerifier, key: SigningKey, server: JWKSServer, cache: JWKSCache
) -> None:
    await verifier.verify(sign(key, claims()))
    server.down = True
    assert await cache.refresh() is False  # it tried, failed ...
    await verifier.verify(sign(key, claims()))  # ... and kept serving the keys it had
    assert server.fetches == 2 and cache.failures == 1


# ---------------------------------------------------------------- issue #11, findings 5 and 7


async def test_a_withdrawn_key_stops_verifying_within_one_refresh_interval(key: SigningKey) -> None:
    """Finding 5: keys are reloaded on a fixed interval, not only on an unknown kid, so a key the issuer revokes is
    refused within one interval, even for a token this verifier had already verified and cached."""
    server = JWKSServer(key, SigningKey("k2"))
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    async with JWKSCache(JWKS_URL, client=client, refresh_seconds=0.3, min_refetch_seconds=0.3) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        token = sign(key, claims())
        await verifier.verify(token)
        server.keys = [k for k in server.keys if k.kid != key.kid]  # the issuer revokes k1
        withdrawn_at = time.monotonic()
        await eventually(lambda: _now(key.kid not in cache.kids), timeout=2)
        assert time.monotonic() - withdrawn_at < 0.3 + 0.5  # one interval (plus the fetch and the scheduling)
        error = await rejected(verifier, token)
        assert error.detail == "unknown signing key"
        await rejected(verifier, sign(key, claims()))


async def test_a_revoked_subject_is_refused_within_one_refresh_interval(key: SigningKey) -> None:
    """Finding 6: the issuer lists a subject (a client cut off) in its JWKS's `revoked` member; within one reload
    its tokens issued before `not_before` are refused, the one already verified and cached too, while its tokens
    issued since, and other subjects' tokens, verify; malformed entries are ignored."""
    server = JWKSServer(key)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    subject, other = str(uuid.uuid4()), str(uuid.uuid4())
    now = int(time.time())
    async with JWKSCache(JWKS_URL, client=client, refresh_seconds=0.3, min_refetch_seconds=0.3) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        cached, unseen = sign(key, claims(sub=subject, iat=now - 5)), sign(key, claims(sub=subject, iat=now - 1))
        later, bystander = sign(key, claims(sub=subject, iat=now)), sign(key, claims(sub=other, iat=now - 5))
        await verifier.verify(cached)
        server.revoked = [
            {"sub_sha256": subject_digest(subject), "not_before": now},
            {"sub_sha256": subject_digest(other), "not_before": "soon"},
            {"sub": other, "not_before": now},
            "junk",
        ]
        revoked_at = time.monotonic()
        await eventually(lambda: _now(cache.not_before(subject) == now), timeout=2)
        assert time.monotonic() - revoked_at < 0.3 + 0.5
        for token in (cached, unseen):
            assert (await rejected(verifier, token)).detail == "token revoked"
        assert (await verifier.verify(later)).id == uuid.UUID(subject)
        assert (await verifier.verify(bystander)).id == uuid.UUID(other)
        server.revoked = []  # the revocation ages out of the document: nothing is refused for it any more
        await eventually(lambda: _now(cache.not_before(subject) is None), timeout=2)
        assert (await verifier.verify(cached)).id == uuid.UUID(subject)


async def test_a_hanging_jwks_endpoint_does_not_delay_tokens_whose_key_is_known(key: SigningKey) -> None:
    """Finding 7: while a reload hangs, a request whose kid is known is answered at once; an unknown kid waits for
    that reload at most `wait_seconds`; once the endpoint answers again the keys are current."""
    server = HangingJWKS(key)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.async_handler))
    async with JWKSCache(
        JWKS_URL, client=client, refresh_seconds=0.2, min_refetch_seconds=0.2, wait_seconds=0.5
    ) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        await verifier.verify(sign(key, claims()))
        server.hang = True
        await eventually(lambda: _now(server.waiting >= 1))  # the background reload is stuck on the endpoint
        started = time.monotonic()
        for _ in range(50):  # new tokens each time: no verified-token cache helps
            await verifier.verify(sign(key, claims()))
        assert time.monotonic() - started < 0.5, "a known kid must not wait for the hanging fetch"
        started = time.monotonic()
        await rejected(verifier, sign(SigningKey("unknown"), claims()))
        assert time.monotonic() - started < 1.0  # bounded by wait_seconds, not the fetch's own timeout
        rotated = SigningKey("k2")
        server.keys.append(rotated)
        server.hang = False
        server.release.set()
        await eventually(lambda: _now(rotated.kid in cache.kids), timeout=3)
        await verifier.verify(sign(rotated, claims()))


async def test_failed_reloads_back_off(key: SigningKey) -> None:
    """Finding 7: after failures the reloads are spaced 1, 2, 4 ... s apart, whatever the flood of unknown kids."""
    server = JWKSServer(key)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    async with JWKSCache(JWKS_URL, client=client, refresh_seconds=30, min_refetch_seconds=0.05) as cache:
        verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
        await verifier.verify(sign(key, claims()))
        server.down = True
        forged = [sign(SigningKey(f"forged-{n}"), claims()) for n in range(10)]
        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:
            for error in await asyncio.gather(*(verifier.verify(t) for t in forged), return_exceptions=True):
                assert isinstance(error, Unauthorized) and error.status == 401
            await asyncio.sleep(0.05)
        # In 1.6 s of floods: the first failed fetch, one a second later, then the 2 s delay: 2 or 3 fetches.
        assert 2 <= server.fetches - 1 <= 3, server.fetches
        assert cache.failures == server.fetches - 1
        await verifier.verify(sign(key, claims()))  # the known key is still served


# ---------------------------------------------------------------- as FastAPI dependencies
