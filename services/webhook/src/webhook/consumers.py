"""Every event on the exchange (`#`), through the quorum queue `webhook.events`, consumed in batches
(`itsm_shared.batches`) with the inbox: a redelivery is a duplicate that makes no second delivery. What is not a
CloudEvent is parked. A thin adapter over `fanout`."""

from __future__ import annotations

from itsm_shared.app import Runtime
from itsm_shared.batches import consume_batches, run_batch_consumers

from webhook import fanout

QUEUE = "webhook.events"  # batches of the shared defaults (itsm_shared.batches.BatchConsumer)


def register(rt: Runtime) -> list[str]:
    return [
        consume_batches(
            rt,
            queue=QUEUE,
            routing_key="#",
            parse=fanout.parse,
            handle=fanout.on_events,
            event_id=fanout.event_id,
            description="Every event, stored for replays and fanned out to the matching webhook subscriptions",
        ),
    ]


async def run(rt: Runtime) -> None:
    await run_batch_consumers(rt)
