"""A client that creates incidents at a steady pace, the way a careful integrator does: each create has an
Idempotency-Key of its own, and a create that got no answer (a connection error), a 5xx, or a 409 (the key's first
request still in flight) is sent again, same key, same body, until it is answered 201. What it was answered is
counted, so a test can say how often it had to retry and how often the answer was a replay."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

RETRY_PAUSE = 0.05  # seconds, doubled after each failed attempt of a key ...
RETRY_PAUSE_MAX = 0.5  # ... up to this


@dataclass
class IdempotentCreates:
    client: httpx.AsyncClient
    headers: Mapping[str, str]
    # The body of the n-th create (its title should carry n, so a row tells which key made it).
    body: Any
    path: str = "/api/v1/incidents"
    # Idempotency-Key -> the id it was answered with (201, first answer or replay).
    acknowledged: dict[str, str] = field(default_factory=dict)
    # Idempotency-Key -> the body it was sent with.
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What each attempt got: "201", "201 replayed", "503", "ConnectError", ...
    answers: Counter[str] = field(default_factory=Counter)
    # Keys with more than one attempt.
    retried: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)

    # How long a create under way may still be retried after `stop()`.
    grace: float = 30.0
    stopping_at: float | None = None

    def stop(self) -> None:
        """No new creates; those under way are retried for `grace` seconds more."""
        self.stopping_at = time.monotonic()

    def _given_up(self) -> bool:
        return self.stopping_at is not None and time.monotonic() > self.stopping_at + self.grace

    async def create(self) -> None:
        """One create, retried with its key until answered 201 (or until `grace` after `stop()`)."""
        n = len(self.sent)
        key = f"replicas-{n}-{uuid.uuid4()}"
        body = self.body(n)
        self.sent[key] = body
        pause = RETRY_PAUSE
        while True:
            try:
                response = await self.client.post(
                    self.path, json=body, headers={**self.headers, "Idempotency-Key": key}
                )
            except httpx.TransportError as exc:
                self.answers[type(exc).__name__] += 1
            else:
                if response.status_code == 201:
                    replayed = response.headers.get("Idempotent-Replayed") == "true"
                    self.answers["201 replayed" if replayed else "201"] += 1
                    self.acknowledged[key] = response.json()["id"]
                    return
                self.answers[str(response.status_code)] += 1
                if response.status_code < 500 and response.status_code != 409:
                    self.refused.append(f"{key}: {response.status_code} {response.text[:200]}")
                    return
            if self._given_up():
                return
            self.retried.add(key)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_PAUSE_MAX)

    async def run(self, workers: int, pace: float) -> None:
        """`workers` loops, each starting a create every `pace` seconds (one at a time), until `stop()`."""

        async def worker() -> None:
            while self.stopping_at is None:
                started = time.monotonic()
                await self.create()
                await asyncio.sleep(max(0.0, pace - (time.monotonic() - started)))

        await asyncio.gather(*(worker() for _ in range(workers)))

    @property
    def unanswered(self) -> list[str]:
        return [key for key in self.sent if key not in self.acknowledged]
