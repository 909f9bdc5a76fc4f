"""One HTTP attempt of a delivery: a POST of the event's bytes with the Standard Webhooks headers, to a checked
address (`ssrf.targets`), redirects not followed, everything within the timeout. The outcome is what the
delivery log shows: status code, latency, the first KiB of the answer, the error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from webhook import ssrf

CONTENT_TYPE = "application/cloudevents+json"  # the CloudEvents HTTP binding's structured mode
USER_AGENT = "itsm-webhook/1.0 (+https://www.standardwebhooks.com/)"
EXCERPT_BYTES = 1024


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    latency_ms: int
    response: str | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def _excerpt(response: httpx.Response) -> str:
    read = b""
    async for chunk in response.aiter_bytes():
        read += chunk
        if len(read) >= EXCERPT_BYTES:
            break
    return read[:EXCERPT_BYTES].decode("utf-8", "replace")


class Sender:
    def __init__(self, *, timeout: float, resolver: ssrf.Resolver | None = None) -> None:
        self.timeout = timeout
        self.resolver = resolver
        # No keep-alive: a connection is made to a checked address for one host (Host and SNI are that host's),
        # and a pool keyed by address could hand it to another host on the same address. No proxies from the
        # environment either: they would connect elsewhere than the checked address.
        self.client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, url: str, body: bytes, headers: Mapping[str, str], *, allow_private: bool) -> Outcome:
        started = time.monotonic()

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            async with asyncio.timeout(self.timeout):
                targets = await ssrf.targets(url, allow_private=allow_private, resolver=self.resolver)
                failure: httpx.HTTPError | None = None
                for target in targets:  # each checked address in turn, while the connection is refused
                    request = self.client.build_request(
                        "POST",
                        target.url,
                        content=body,
                        headers={
                            "Content-Type": CONTENT_TYPE,
                            "User-Agent": USER_AGENT,
                            **headers,
                            **target.headers,
                        },
                        extensions=target.extensions,
                    )
                    try:
                        response = await self.client.send(request, stream=True)
                    except httpx.ConnectError as exc:
                        failure = exc
                        continue
                    latency = elapsed()
                    try:
                        excerpt = await _excerpt(response)
                    except httpx.HTTPError:
                        excerpt = None
                    finally:
                        await response.aclose()
                    return Outcome(response.status_code, latency, excerpt)
                assert failure is not None
                raise failure
        except ssrf.Refused as exc:
            return Outcome(None, elapsed(), error=f"refused: {exc}")
        except TimeoutError:
            return Outcome(None, elapsed(), error=f"timeout: no answer within {self.timeout:g} s")
        except httpx.TimeoutException as exc:
            return Outcome(None, elapsed(), error=f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return Outcome(None, elapsed(), error=f"{type(exc).__name__}: {exc}"[:500])
