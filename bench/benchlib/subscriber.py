"""The outside subscriber of bench/incident_create.py: a plain aio_pika consumer in its own process, as another
system would bind one to the stack's exchange.

`python bench/benchlib/subscriber.py AMQP_URL EXCHANGE ROUTING_KEY OUT_FILE`: declares its own exclusive,
auto-deleted queue bound to EXCHANGE with ROUTING_KEY (`incident.created`), consumes without acknowledgements
(nothing to lose: the figure is when events arrive), and for each message appends one line to OUT_FILE:

    <arrival, wall clock seconds> <event `time`, wall clock seconds> <subject>

written out every 0.1 s, so the parent can follow the file while it runs. The lag of an event is its arrival
minus its `time` (set by the incident service when it built the event, in the request): both are the same
machine's wall clock. Prints READY once the queue is bound, and stops on SIGTERM or SIGINT after writing
what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any


async def run(amqp_url: str, exchange: str, routing_key: str, out: Path) -> None:
    import aio_pika

    pending: list[str] = []

    async def on_message(message: Any) -> None:
        arrived = time.time()
        try:
            event = json.loads(message.body)
            when = datetime.fromisoformat(event["time"]).timestamp()
            subject = str(event.get("subject") or "-")
        except (ValueError, KeyError, TypeError):
            return
        pending.append(f"{arrived:.6f} {when:.6f} {subject}\n")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key)
        await queue.consume(on_message, no_ack=True)
        print("READY", flush=True)
        with out.open("a") as file:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)
                if pending:
                    file.write("".join(pending))
                    pending.clear()
                    file.flush()
    finally:
        await connection.close()


def main() -> int:
    amqp_url, exchange, routing_key, out = sys.argv[1:5]
    try:
        import uvloop

        uvloop.run(run(amqp_url, exchange, routing_key, Path(out)))
    except ImportError:
        asyncio.run(run(amqp_url, exchange, routing_key, Path(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
