"""The outbox relay in a process of its own (itsm_shared.relay_process): woken by this process's commits, its
counters in this process's metrics, replaced when it dies, gone when its service dies, and a fault point in it
kills the service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from itsm_shared import relay as relay_module
from itsm_shared import trust
from itsm_shared.relay_process import RELAY_COMM, RelayProcess
from itsm_shared.settings import ServiceSettings
from itsm_shared.testing import Listen, eventually
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from .support import SERVICE, append_committed, event, relay_connections

pytestmark = pytest.mark.usefixtures("clean_outbox")

# A service process that runs nothing but a relay process, and prints the relay's pid.
SERVICE_SCRIPT = """
import asyncio, json, sys
from itsm_shared.relay_process import RelayProcess
from itsm_shared.settings import ServiceSettings

async def main():
    settings = ServiceSettings.model_validate(json.loads(sys.argv[1]))
    relay = RelayProcess(service=sys.argv[2], settings=settings, user_id=sys.argv[3])
    ready = asyncio.Event()
    ready.set()
    relay.start(ready)
    while relay.pid is None:
        await asyncio.sleep(0.02)
    print(relay.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead: only its parent has not reaped it yet
        return stat.read().rpartition(")")[2].split()[0] != "Z"


def command_name(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as comm:
        return comm.read().strip()


def published() -> float:
    return float(
        next(s.value for m in relay_module.PUBLISHED.collect() for s in m.samples if s.name.endswith("_total"))
    )


@pytest.fixture
async def relay_process(settings: ServiceSettings) -> AsyncIterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def start(**updates: Any) -> RelayProcess:
        own = settings.model_copy(update={"outbox_sweep_seconds": 30.0, **updates})
        relay = RelayProcess(service=SERVICE, settings=own, user_id=trust.connection_user(own.amqp_url))
        ready = asyncio.Event()
        ready.set()
        relay.start(ready)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        await relay.stop()


async def test_commits_wake_the_relay_process_and_its_counters_reach_this_process(
    sessions: async_sessionmaker[AsyncSession],
    listen: Listen,
    relay_process: Callable[..., RelayProcess],
) -> None:
    listener = await listen("woken.*")
    before = published()
    relay = relay_process()
    await eventually(lambda: relay_connections(sessions), what="the relay process's connection")
    assert relay.pid is not None
    assert command_name(relay.pid) == RELAY_COMM
    await asyncio.sleep(0.3)  # its first pass is over: the next sweep is 30 s away, only a wake publishes sooner
    for n in range(1, 4):
        await append_committed(sessions, event("woken.created", n=n))
        await listener.wait(count=n, timeout=5.0)
    await eventually(
        lambda: asyncio.sleep(0, published() - before), lambda n: n >= 3, timeout=5, what="the counter reported"
    )

    pid = relay.pid
    await relay.stop()
    assert not alive(pid)
    await eventually(lambda: relay_connections(sessions), lambda pids: pids == [], what="its connection closed")


async def test_a_relay_process_that_dies_is_replaced(
    sessions: async_sessionmaker[AsyncSession],
    listen: Listen,
    relay_process: Callable[..., RelayProcess],
) -> None:
    listener = await listen("replaced.*")
    relay = relay_process()
    (first_connection,) = await eventually(lambda: relay_connections(sessions), what="the relay's connection")
    first = relay.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await eventually(lambda: asyncio.sleep(0, relay.pid), lambda pid: pid not in (None, first), what="a new relay")
    await eventually(
        lambda: relay_connections(sessions), lambda pids: pids and first_connection not in pids, what="its connection"
    )
    await append_committed(sessions, event("replaced.created"))
    await listener.wait(count=1, timeout=5.0)
    assert not alive(first)


async def test_a_relay_process_that_cannot_start_is_tried_again(
    sessions: async_sessionmaker[AsyncSession],
    listen: Listen,
    relay_process: Callable[..., RelayProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listener = await listen("late.*")
    interpreter = sys.executable
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    relay = relay_process()
    await asyncio.sleep(0.5)  # its first try has failed by now
    assert relay.pid is None
    monkeypatch.setattr(sys, "executable", interpreter)
    await eventually(lambda: relay_connections(sessions), timeout=15, what="the relay started on a later try")
    await append_committed(sessions, event("late.created"))
    await listener.wait(count=1, timeout=5.0)


@contextlib.contextmanager
def service_with_relay(settings: ServiceSettings, **updates: Any) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A process standing for a service, with its relay process: (the service, the relay's pid); both killed
    after, whatever the test did."""
    own = settings.model_copy(update={"outbox_sweep_seconds": 30.0, **updates})
    service = subprocess.Popen(
        [sys.executable, "-c", SERVICE_SCRIPT, own.model_dump_json(), SERVICE, trust.connection_user(own.amqp_url)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert service.stdout is not None
    relay = int(service.stdout.readline())
    try:
        yield service, relay
    finally:
        service.kill()
        if alive(relay):
            os.kill(relay, signal.SIGKILL)


async def test_the_relay_process_ends_with_its_service(
    sessions: async_sessionmaker[AsyncSession], settings: ServiceSettings
) -> None:
    with service_with_relay(settings) as (service, relay):
        await eventually(lambda: relay_connections(sessions), what="the relay's connection")
        service.kill()  # kill -9: no shutdown runs, the kernel closes the relay's pipe
        assert service.wait(timeout=5) == -signal.SIGKILL
        await eventually(lambda: asyncio.sleep(0, alive(relay)), lambda up: not up, what="the relay gone")
        await eventually(lambda: relay_connections(sessions), lambda pids: pids == [], what="its connection closed")


async def test_a_fault_point_in_the_relay_process_kills_its_service(
    sessions: async_sessionmaker[AsyncSession], settings: ServiceSettings, listen: Listen
) -> None:
    listener = await listen("doomed.*")
    # No wake reaches it from this process: its sweep, every half second, finds the row.
    with service_with_relay(settings, fault_point="outbox.before_publish", outbox_sweep_seconds=0.5) as (
        service,
        relay,
    ):
        await eventually(lambda: relay_connections(sessions), what="the relay's connection")
        doomed = event("doomed.created")
        await append_committed(sessions, doomed)
        assert await asyncio.to_thread(service.wait, 30) == -signal.SIGKILL
        await eventually(lambda: asyncio.sleep(0, alive(relay)), lambda up: not up, what="the relay gone")
        async with sessions() as session:
            row = await session.execute(text("SELECT published_at FROM outbox WHERE id = :id"), {"id": doomed["id"]})
            assert row.scalar_one() is None
        assert listener.messages == []


def test_a_report_line_that_does_not_parse_is_refused() -> None:
    from itsm_shared.relay_process import Counters

    for line in (b"", b"{}", b"[1]", b'{"published": "x", "failed": {}, "pending": 0}', b"not json"):
        with pytest.raises(ValueError, match=r"."):
            Counters.parse(line)
    good = Counters(3, {"ConnectionError": 1}, 2)
    assert json.loads(Counters.parse(good.line()).line()) == json.loads(good.line())
