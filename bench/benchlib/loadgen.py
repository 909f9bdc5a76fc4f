"""Closed-loop HTTP load generator, run as its own process so that its CPU shows apart from the services'.

`python bench/benchlib/loadgen.py CONFIG.json RESULT.json`. CONFIG: url, headers, concurrency, warmup and
duration (seconds), body ("incident": a new incident per request), record_ids (take `id` from each 201 body).
`concurrency` workers share one httpx.AsyncClient limited to that many connections; each sends its next request
when the previous one answered. Prints `MEASURE` when the warm-up ends and `DONE` when the measurement ends
(the parent samples CPU at those moments). RESULT: the latency of every request that completed inside the
measured window, the status counts, and (id, monotonic time of the 201) pairs for the event-lag match.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

COMPONENTS = ("VPN", "printer", "email", "laptop", "Wi-Fi", "SAP", "payroll", "CRM", "Teams", "badge reader")
SYMPTOMS = ("times out", "is very slow", "keeps crashing", "shows an error", "cannot connect", "login fails")


def incident_body(worker: int, n: int) -> bytes:
    component, symptom = COMPONENTS[n % len(COMPONENTS)], SYMPTOMS[(n + worker) % len(SYMPTOMS)]
    return json.dumps(
        {
            "title": f"{component} {symptom} (bench {worker}-{n})",
            "description": f"User reports that the {component} {symptom} since this morning. Error code ERR-{n}.",
            "category": "software" if n % 2 else "network",
            "impact": 1 + n % 3,
            "urgency": 1 + (n // 3) % 3,
            "assignment_group": f"group-{n % 20}",
        }
    ).encode()


async def run(config: dict[str, Any]) -> dict[str, Any]:
    concurrency = int(config["concurrency"])
    url: str = config["url"]
    headers = {"Content-Type": "application/json", **config.get("headers", {})}
    record_ids = bool(config.get("record_ids"))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    created: list[tuple[str, float]] = []
    errors: Counter[str] = Counter()
    started = time.monotonic()
    measure_from = started + float(config["warmup"])
    measure_until = measure_from + float(config["duration"])

    async def announce() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        print("MEASURE", flush=True)
        await asyncio.sleep(max(0.0, measure_until - time.monotonic()))
        print("DONE", flush=True)

    async def worker(client: httpx.AsyncClient, index: int) -> None:
        n = 0
        while time.monotonic() < measure_until:
            n += 1
            body = incident_body(index, n)
            sent = time.monotonic()
            try:
                response = await client.post(url, content=body, headers=headers)
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                response, status = None, type(exc).__name__
            done = time.monotonic()
            if not measure_from <= done <= measure_until:
                continue
            latencies.append(done - sent)
            statuses[status] += 1
            if response is None:
                errors[status] += 1
            elif response.status_code == 201 and record_ids:
                created.append((str(response.json()["id"]), done))
            elif response.status_code >= 400 and len(errors) < 20:
                errors[f"{response.status_code} {response.text[:200]}"] += 1

    timeout = httpx.Timeout(30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        ticker = asyncio.create_task(announce())
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
        await ticker
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "window": [measure_from, measure_until],
        "latencies": latencies,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "created": created,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "wall_seconds": time.monotonic() - started,
    }


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    try:
        import uvloop  # the services run on uvloop too (uvicorn picks it when installed)

        result = uvloop.run(run(config))
    except ImportError:
        result = asyncio.run(run(config))
    Path(sys.argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
