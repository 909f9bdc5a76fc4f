"""RabbitMQ's message counters without the management plugin: the node's global counters
(rabbit_global_counters, always on since RabbitMQ 3.9), read with `rabbitmqctl eval`.

`messages_delivered_total` summed over every protocol and queue type: messages delivered to consumers and fetched
with basic.get, redeliveries included. The counters are the whole node's: other vhosts, test suites and anything
else using this broker count too. Each read starts rabbitmqctl (about a second, half of it CPU), so a benchmark
reads them outside its CPU windows."""

from __future__ import annotations

import asyncio
import shutil

DELIVERED = (
    "lists:sum([maps:get(messages_delivered_total, Counters, 0)"
    " || Counters <- maps:values(rabbit_global_counters:overview())])."
)


class BrokerCounters:
    """Reads the node's counters; `unavailable` says why when it cannot (then every read is None)."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.unavailable = "" if shutil.which("rabbitmqctl") else "rabbitmqctl is not installed"

    async def delivered(self) -> int | None:
        """Messages the node has delivered since it started, or None when it cannot be read."""
        if self.unavailable:
            return None
        try:
            process = await asyncio.create_subprocess_exec(
                "rabbitmqctl",
                "eval",
                DELIVERED,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            self.unavailable = f"rabbitmqctl eval: {exc}"
            return None
        try:
            out, err = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            self.unavailable = f"rabbitmqctl eval gave no answer in {self.timeout:.0f} s"
            return None
        text = out.decode().strip()
        if process.returncode != 0 or not text.isdigit():
            self.unavailable = f"rabbitmqctl eval exited {process.returncode}: {(err or out).decode().strip()[:200]}"
            return None
        return int(text)
