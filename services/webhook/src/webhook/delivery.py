"""The dispatcher: each replica claims due deliveries and sends them, concurrently.

- Deliveries are rows, so none is lost with a process. A claim (`FOR UPDATE SKIP LOCKED`, so replicas never take
  the same row) moves the row's `next_attempt_at` past the attempt's end (`webhook_claim_seconds`); if the
  claimer dies mid-attempt the row is due again then, for any replica, and sent again with the same webhook-id.
- Each attempt is a task of its own; at most `webhook_max_in_flight` per replica and
  `webhook_endpoint_concurrency` per subscription, and a subscription at its cap is left out of the next claims:
  a slow or dead endpoint holds a few slots, and never the others' deliveries.
- The outcome is written in a transaction of its own: the attempt in the log; the delivery succeeded, due
  again on the retry schedule, or failed for good; the subscription's failing streak, and its disabling on a
  410 Gone or after `webhook_disable_after_seconds` of failures (`webhook.subscription_disabled`, outbox).
- Woken by the NOTIFY of new deliveries (and by finished attempts), else every `webhook_poll_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter as Tally
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from itsm_shared.app import Runtime
from itsm_shared.db import asyncpg_dsn, driver_connection, transaction
from prometheus_client import Counter, Gauge
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from webhook import service, signing
from webhook.config import WebhookSettings, get_settings
from webhook.fanout import CHANNEL
from webhook.models import Delivery, DeliveryAttempt, DeliveryStatus, Subscription
from webhook.sender import Outcome, Sender

log = logging.getLogger(__name__)

ATTEMPTS = Counter("itsm_webhook_attempts_total", "Delivery attempts", ["outcome"])
IN_FLIGHT = Gauge("itsm_webhook_in_flight", "Delivery attempts in flight in this replica")

CANDIDATES = """
SELECT d.id, d.subscription_id
FROM delivery d JOIN subscription s ON s.id = d.subscription_id
WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND s.active
  AND NOT (d.subscription_id = ANY($1::uuid[]))
ORDER BY d.next_attempt_at
LIMIT $2
FOR UPDATE OF d SKIP LOCKED
"""
CLAIM = """
UPDATE delivery d SET next_attempt_at = now() + make_interval(secs => $2)
FROM stored_event e, subscription s
WHERE d.id = ANY($1::uuid[]) AND e.id = d.event_id AND s.id = d.subscription_id
RETURNING d.id, d.subscription_id, d.event_id, e.body, s.url, s.secret, s.previous_secret,
          s.previous_secret_expires_at
"""


@dataclass(frozen=True)
class Job:
    delivery_id: uuid.UUID
    subscription_id: uuid.UUID
    event_id: uuid.UUID
    body: bytes
    url: str
    secret: str
    previous_secret: str | None
    previous_until: datetime | None

    @classmethod
    def of(cls, row: Any) -> Job:
        return cls(
            row["id"],
            row["subscription_id"],
            row["event_id"],
            bytes(row["body"]),
            row["url"],
            row["secret"],
            row["previous_secret"],
            row["previous_secret_expires_at"],
        )


async def claim(
    session: AsyncSession, *, free: int, busy: Tally[uuid.UUID], cap: int, claim_seconds: float
) -> list[Job]:
    """Up to `free` due deliveries, at most `cap` in flight per subscription counting `busy`, claimed."""
    connection = await driver_connection(session)
    full = [s for s, n in busy.items() if n >= cap]
    rows = await connection.fetch(CANDIDATES, full, min(free * 4, 1000))
    taken: Tally[uuid.UUID] = Tally()
    picked: list[uuid.UUID] = []
    for row in rows:
        subscription = row["subscription_id"]
        if busy[subscription] + taken[subscription] < cap and len(picked) < free:
            taken[subscription] += 1
            picked.append(row["id"])
    if not picked:
        return []
    return [Job.of(row) for row in await connection.fetch(CLAIM, picked, claim_seconds)]


async def record(
    session: AsyncSession, job: Job, outcome: Outcome, *, settings: WebhookSettings, now: datetime
) -> str | None:
    """Write one attempt's outcome; returns the delivery's status, None if it is gone (its subscription deleted)."""
    # The subscription first, as every writer of both does (no deadlock with a PATCH cancelling deliveries);
    # NO KEY UPDATE: new deliveries referencing it are not held up.
    stmt = select(Subscription).where(Subscription.id == job.subscription_id)
    subscription = (
        await session.exec(stmt.with_for_update(key_share=True).execution_options(populate_existing=True))
    ).first()
    delivery = (
        await session.exec(
            select(Delivery)
            .where(Delivery.id == job.delivery_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()
    if subscription is None or delivery is None:
        return None
    session.add(
        DeliveryAttempt(
            delivery_id=delivery.id,
            attempted_at=now,
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            response=outcome.response,
            error=outcome.error,
        )
    )
    delivery.attempts += 1
    delivery.last_attempt_at = now
    session.add(delivery)
    if delivery.status != DeliveryStatus.PENDING:
        return delivery.status  # cancelled (or retried by hand) meanwhile: the attempt is logged, nothing more
    schedule = settings.webhook_retry_schedule
    if outcome.succeeded:
        delivery.status, delivery.next_attempt_at = DeliveryStatus.SUCCEEDED, None
        subscription.failing_since = None
        session.add(subscription)
        return delivery.status
    if delivery.attempts < len(schedule) and outcome.status_code != 410:
        delivery.next_attempt_at = now + timedelta(seconds=schedule[delivery.attempts])
    else:
        delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED, None
    if subscription.failing_since is None:
        subscription.failing_since = now
        session.add(subscription)
    if outcome.status_code == 410:
        await service.disable(session, subscription, "the endpoint answered 410 Gone", now)
    elif now - subscription.failing_since >= timedelta(seconds=settings.webhook_disable_after_seconds):
        since = subscription.failing_since.isoformat(timespec="seconds")
        await service.disable(session, subscription, f"every attempt failed since {since}", now)
    return delivery.status


class Dispatcher:
    def __init__(self, rt: Runtime, settings: WebhookSettings | None = None, sender: Sender | None = None) -> None:
        self.rt = rt
        self.settings = settings or get_settings()
        self.sender = sender or Sender(timeout=self.settings.webhook_timeout_seconds)
        self.busy: Tally[uuid.UUID] = Tally()
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen(), name="webhook-listen")
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=self.settings.webhook_poll_seconds)
                self.wake.clear()
                try:
                    await self.fill()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("webhook claim failed: %s", f"{type(exc).__name__}: {exc}"[:300])
        finally:
            listener.cancel()
            for task in list(self.tasks):
                task.cancel()  # its claim runs out, and another pass sends it again
            for task in [listener, *self.tasks]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.sender.aclose()

    async def fill(self) -> None:
        """Claim and start what is due, while there are free slots."""
        while (free := self.settings.webhook_max_in_flight - len(self.tasks)) > 0:
            async with transaction(self.rt.sessions) as session:
                jobs = await claim(
                    session,
                    free=free,
                    busy=self.busy,
                    cap=self.settings.webhook_endpoint_concurrency,
                    claim_seconds=self.settings.webhook_claim_seconds,
                )
            for job in jobs:
                self.busy[job.subscription_id] += 1
                task = asyncio.create_task(self.deliver(job), name=f"webhook-delivery {job.delivery_id}")
                self.tasks.add(task)
                task.add_done_callback(functools.partial(self._done, job=job))
            IN_FLIGHT.set(len(self.tasks))
            if len(jobs) < free:
                return

    def _done(self, task: asyncio.Task[None], *, job: Job) -> None:
        self.tasks.discard(task)
        self.busy[job.subscription_id] -= 1
        if self.busy[job.subscription_id] <= 0:
            del self.busy[job.subscription_id]
        IN_FLIGHT.set(len(self.tasks))
        self.wake.set()

    async def deliver(self, job: Job) -> None:
        """One attempt and its outcome. If the outcome cannot be written, the claim runs out and it is sent again."""
        try:
            secrets = service.signing_secrets(job.subscription_id, job.secret, job.previous_secret, job.previous_until)
        except signing.SecretKeyError as exc:
            outcome = Outcome(None, 0, error=f"not signed: {exc}"[:500])
        else:
            headers = signing.headers(secrets, str(job.event_id), int(time.time()), job.body)
            outcome = await self.sender.send(
                job.url, job.body, headers, allow_private=self.settings.webhook_allow_private_networks
            )
        ATTEMPTS.labels("succeeded" if outcome.succeeded else "failed").inc()
        try:
            async with transaction(self.rt.sessions) as session:
                await record(session, job, outcome, settings=self.settings, now=service.utcnow())
        except Exception as exc:
            log.warning(
                "webhook attempt not recorded; it will be sent again",
                extra={"delivery_id": str(job.delivery_id), "error": f"{type(exc).__name__}: {exc}"[:300]},
            )

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                connection = await asyncpg.connect(asyncpg_dsn(self.settings.database_url))
                try:
                    closed = asyncio.Event()
                    connection.add_termination_listener(lambda *_, closed=closed: closed.set())
                    await connection.add_listener(CHANNEL, lambda *_: self.wake.set())
                    delay = 0.5
                    self.wake.set()
                    await closed.wait()
                finally:
                    with contextlib.suppress(Exception):
                        await connection.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook listener lost its connection: %s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)


_DISPATCHER = "webhook.dispatcher"


async def run(rt: Runtime) -> None:
    """The background loop (ServiceSpec.background)."""
    dispatcher = Dispatcher(rt)
    rt.extras[_DISPATCHER] = dispatcher
    await dispatcher.run()
