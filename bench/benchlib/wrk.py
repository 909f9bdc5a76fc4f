"""wrk (Debian package `wrk`, a C load generator) run by the benchmarks, with bench/benchlib/wrk.lua.

`wrk -t2 -c32 -d8s --latency --timeout 10s -s wrk.lua URL`, the request described through the environment
(method, Authorization header, pacing rate; see wrk.lua), the figures read back from the JSON that the
script's done() writes: requests, duration, socket errors (connect, read, write, timeout) and responses
with a status above 399 (what wrk prints as "Non-2xx or 3xx responses"), latency percentiles.

The latency percentiles are wrk's own, as `wrk --latency` prints them: wrk 4.1 adds samples for the requests a
stalled connection did not send (its coordinated-omission correction, `stats_correct`), so a long stall
weighs on p99 as it would for an open-loop client. `--timeout 10s` instead of wrk's 2 s, so a slow
response is a latency, not a timeout error; a response slower than 10 s is reported as a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import common  # noqa: F401 (puts deploy/ on sys.path)

SCRIPT = Path(__file__).resolve().with_name("wrk.lua")
TIMEOUT = "10s"


def wrk_binary() -> str:
    """wrk, installed from Debian's package when missing."""
    from system_packages import debian_binary  # deploy/system_packages.py, on sys.path by benchlib.common

    return debian_binary("wrk")


def wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].strip() if first else "wrk"


@dataclass
class WrkResult:
    seconds: float
    requests: int
    status_errors: int  # responses with a status above 399
    socket_errors: dict[str, int]
    latency_us: dict[str, float]
    started: float  # wall clock (time.time()) when wrk was started
    ended: float
    cpu_seconds: float  # wrk's own CPU time (user + system)
    log: str

    @property
    def ok(self) -> int:
        return self.requests - self.status_errors

    @property
    def rate(self) -> float:
        """Successful (2xx/3xx) responses per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.status_errors + sum(self.socket_errors.values())

    def latency(self, name: str) -> float:
        """Latency in seconds: p50, p90, p95, p99, p999, mean, max."""
        return self.latency_us[name] / 1e6

    def error_text(self) -> str:
        parts = [f"non-2xx {self.status_errors}"] if self.status_errors else []
        parts += [f"{kind} {count}" for kind, count in self.socket_errors.items() if count]
        return ", ".join(parts) or "none"


async def run_wrk(
    url: str,
    *,
    method: str = "GET",
    authorization: str | None = None,
    threads: int = 2,
    connections: int = 32,
    duration: float = 8.0,
    rate: float = 0.0,
    work_dir: Path,
    name: str,
    on_start: Callable[[int], Awaitable[None]] | None = None,
) -> WrkResult:
    """Run wrk once and return its figures. `on_start(pid)` is awaited as soon as wrk runs (the caller
    takes its CPU snapshot there). wrk's own text output is kept in `work_dir/wrk-<name>.log`. wrk's CPU time
    is what this process's reaped children used meanwhile (wrk is gone before a /proc snapshot could see it)."""
    slug = "".join(c if c.isalnum() else "-" for c in name)
    result_path = work_dir / f"wrk-{slug}.json"
    log_path = work_dir / f"wrk-{slug}.log"
    result_path.unlink(missing_ok=True)
    env = {
        **os.environ,
        "BENCH_METHOD": method,
        "BENCH_AUTHORIZATION": authorization or "",
        "BENCH_RATE": f"{rate:.3f}",
        "BENCH_THREADS": str(threads),
        "BENCH_RESULT": str(result_path),
    }
    argv = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        TIMEOUT,
        "-s",
        str(SCRIPT),
        url,
    ]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            if on_start is not None:
                await on_start(process.pid)
            code = await process.wait()
        except BaseException:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            raise
    ended = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    text = log_path.read_text(errors="replace")
    if code != 0 or not result_path.is_file():
        raise RuntimeError(f"wrk for {name!r} failed with exit code {code}:\n{text[-2000:]}")
    data: dict[str, Any] = json.loads(result_path.read_text())
    errors = data["errors"]
    return WrkResult(
        seconds=data["duration_us"] / 1e6,
        requests=int(data["requests"]),
        status_errors=int(errors["status"]),
        socket_errors={k: int(errors[k]) for k in ("connect", "read", "write", "timeout")},
        latency_us={k: float(v) for k, v in data["latency_us"].items()},
        started=started,
        ended=ended,
        cpu_seconds=cpu,
        log=text,
    )
