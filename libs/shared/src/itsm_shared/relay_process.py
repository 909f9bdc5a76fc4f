"""The outbox relay (`itsm_shared.relay`) in a process of its own, a child of the service's process.

In a thread of the service's process the relay shared the interpreter's lock with the request thread: each step of
a pass waited for a busy request thread to hand the lock over (at the interpreter's 5 ms switch interval, events
lagged 135-162 ms at p99 under a saturating create load; at 1 ms, about 72 ms for 5 % more of the request
thread's CPU), and its CPU (0.42 ms per create, a sixth of the incident process's) was taken from the requests' core.

The service starts the relay process once its broker topology is declared (`python -m itsm_shared.relay_process`):

- its stdin is a pipe: the relay's settings as one JSON line, then one byte per wake: a commit of this service
  process that wrote outbox rows (`outbox.written`) writes it, without blocking (a full pipe has wakes enough).
  End of file stops the relay: the service stopped, or died and the kernel closed the pipe;
- it reports its counters on a second pipe once a second, which the service adds to its own /metrics;
- if it dies, the service starts another after a pause (1 s, doubling to 30 s while it keeps dying young);
- a fault point (ITSM_FAULT_POINT, tests) reached in the relay kills the service's process with it: the crash
  tests kill the service between the commit of a change and the publish of its event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from itsm_shared import faults
from itsm_shared.logs import configure_logging
from itsm_shared.relay import FAILED, PENDING, PUBLISHED, RELAYS, OutboxRelay
from itsm_shared.settings import ServiceSettings

log = logging.getLogger(__name__)

# Its name in `ps -o comm`, top and /proc/<pid>/comm (its command line names the service too).
RELAY_COMM = "outbox-relay"
REPORT_SECONDS = 1.0
STOP_SECONDS = 15.0
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
# A relay process that ran this long before it died starts the restart delays over.
LIVED_LONG_ENOUGH = 60.0


class RelayProcess:
    """The service's side: starts and supervises the relay process, wakes it, and takes its counters."""

    def __init__(self, *, service: str, settings: ServiceSettings, user_id: str | None) -> None:
        self.service = service
        self.settings = settings
        self.user_id = user_id
        self.pid: int | None = None
        self._wake_fd: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self, ready: asyncio.Event) -> None:
        """Start the relay process once `ready` is set (the topology is declared), and keep one running."""
        self._task = asyncio.create_task(self._supervise(ready), name=f"outbox-relay-{self.service}")
        RELAYS.add(self.wake)

    def wake(self) -> None:
        fd = self._wake_fd
        if fd is not None:
            # Full: the relay has wakes waiting. Broken: it died; its successor starts with a pass.
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(fd, b"w")

    async def stop(self) -> None:
        RELAYS.discard(self.wake)
        self._stopping = True
        self._close_wake()  # end of file: the relay stops
        process = self._process
        if process is not None:
            try:
                await asyncio.wait_for(process.wait(), STOP_SECONDS)
            except TimeoutError:
                log.warning("outbox relay process did not stop; killing it", extra={"pid": process.pid})
                process.kill()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _close_wake(self) -> None:
        fd, self._wake_fd = self._wake_fd, None
        if fd is not None:
            os.close(fd)

    async def _supervise(self, ready: asyncio.Event) -> None:
        await ready.wait()
        delay = FIRST_RESTART_DELAY
        while not self._stopping:
            started = time.monotonic()
            try:
                outcome = f"exited ({await self._run_one()})"
            except Exception as exc:  # could not start one (out of processes, of file descriptors...)
                outcome = f"failed: {type(exc).__name__}: {exc}"
            if self._stopping:
                return
            if time.monotonic() - started > LIVED_LONG_ENOUGH:
                delay = FIRST_RESTART_DELAY
            log.error("outbox relay process %s; starting another in %.0f s", outcome, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    async def _run_one(self) -> int:
        """Run one relay process until it exits; its exit status."""
        wake_read, wake_write = os.pipe()
        report_read, report_write = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "itsm_shared.relay_process",
                self.service,
                str(report_write),
                stdin=wake_read,
                pass_fds=(report_write,),
            )
        except BaseException:
            os.close(wake_write)
            os.close(report_read)
            raise
        finally:
            os.close(wake_read)
            os.close(report_write)
        self._process, self.pid = process, process.pid
        config = {"service": self.service, "user_id": self.user_id, "settings": _relay_settings(self.settings)}
        with contextlib.suppress(BrokenPipeError):
            os.write(wake_write, json.dumps(config).encode() + b"\n")  # a few hundred bytes: the pipe takes them
        os.set_blocking(wake_write, False)
        self._wake_fd = wake_write
        if self._stopping:  # stop() came while the process started: it stops at once
            self._close_wake()
        try:
            await _take_reports(report_read)
        finally:
            if self._wake_fd == wake_write:
                self._close_wake()
        return await process.wait()


def _relay_settings(settings: ServiceSettings) -> dict[str, Any]:
    """The service's settings the relay uses, secrets resolved (the password files are read already)."""
    values = settings.model_dump(mode="json", include=set(ServiceSettings.model_fields))
    values.update(db_password_file=None, amqp_password_file=None)
    return values


async def _take_reports(fd: int) -> None:
    """Add the relay process's counters to this process's, until it exits (end of file)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    last = Counters()
    try:
        while line := await reader.readline():
            try:
                report = Counters.parse(line)
            except ValueError:
                log.warning("outbox relay process: unreadable report %r", line[:200])
                continue
            report.add_to_metrics(since=last)
            last = report
    finally:
        transport.close()


class Counters:
    """The relay's counters (`PUBLISHED`, `FAILED` by reason, `PENDING`), as one JSON line."""

    def __init__(self, published: float = 0, failed: dict[str, float] | None = None, pending: float = 0) -> None:
        self.published = published
        self.failed = failed or {}
        self.pending = pending

    @classmethod
    def read(cls) -> Counters:
        failed = {
            sample.labels["reason"]: sample.value
            for metric in FAILED.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
        return cls(_value(PUBLISHED), failed, _value(PENDING))

    @classmethod
    def parse(cls, line: bytes) -> Counters:
        try:
            data = json.loads(line)
            failed = {str(k): float(v) for k, v in data["failed"].items()}
            return cls(float(data["published"]), failed, float(data["pending"]))
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(str(exc)) from exc

    def line(self) -> bytes:
        return json.dumps({"published": self.published, "failed": self.failed, "pending": self.pending}).encode()

    def add_to_metrics(self, *, since: Counters) -> None:
        if self.published > since.published:
            PUBLISHED.inc(self.published - since.published)
        for reason, count in self.failed.items():
            if count > since.failed.get(reason, 0):
                FAILED.labels(reason).inc(count - since.failed.get(reason, 0))
        PENDING.set(self.pending)


def _value(metric: Any) -> float:
    return float(next(s.value for m in metric.collect() for s in m.samples if not s.name.endswith("_created")))


# ---------------------------------------------------------------- the relay process itself


def main() -> None:
    import uvloop

    service, report_fd = sys.argv[1], int(sys.argv[2])
    with contextlib.suppress(OSError):  # Linux
        Path("/proc/self/comm").write_text(RELAY_COMM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the service stops us
    config = json.loads(sys.stdin.buffer.readline())
    uvloop.run(_serve(service, config, report_fd))


async def _serve(service: str, config: dict[str, Any], report_fd: int) -> None:
    settings = ServiceSettings.model_validate(config["settings"])
    configure_logging(service, settings.log_level)
    faults.arm(settings.fault_point, also=os.getppid())
    relay = OutboxRelay(service=service, settings=settings, user_id=config["user_id"])
    wakes = sys.stdin.buffer.fileno()
    os.set_blocking(wakes, False)

    def readable() -> None:
        try:
            woken = os.read(wakes, 4096)
        except BlockingIOError:
            return
        if woken:
            relay.wake()
        else:
            relay.stop_soon()  # the service stopped or died

    loop = asyncio.get_running_loop()
    loop.add_reader(wakes, readable)
    loop.add_signal_handler(signal.SIGTERM, relay.stop_soon)  # stopped on its own: as when the service stops
    reports = asyncio.create_task(_report(report_fd))
    try:
        await relay.run()
    finally:
        reports.cancel()
        loop.remove_reader(wakes)


async def _report(fd: int) -> None:
    """The relay's counters to the service, once a second when they changed."""
    reported = Counters()
    while True:
        await asyncio.sleep(REPORT_SECONDS)
        if (counters := Counters.read()).line() != reported.line():
            os.write(fd, counters.line() + b"\n")
            reported = counters


if __name__ == "__main__":
    main()
