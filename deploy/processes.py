"""Processes and probes under the local stack: child process groups that stop whole, waits that fail
fast with the child's log, and the PostgreSQL/RabbitMQ checks that say how to start what is missing.

Used by the test harness (deploy/stack.py), the runner (deploy/run.py), the gateway helpers and bench/.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent

PG_START_HINT = "pg_ctlcluster --skip-systemctl-redirect 15 main start"
RABBIT_START_HINT = "rabbitmq-server -detached"


class StackError(RuntimeError):
    """The stack could not be started or a process misbehaved; the message says what to do."""


class DependencyUnavailable(StackError):
    """PostgreSQL or RabbitMQ does not answer."""


class ProcessFailed(StackError):
    """A process exited or never became ready."""


# --------------------------------------------------------------------------------------------------
# URLs and probes


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _probe(host: str, port: int, hello: bytes, accept: Callable[[bytes], bool], timeout: float) -> str | None:
    """Say hello in the server's protocol; None when the answer is the expected kind, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(hello)
            answer = sock.recv(8)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not answer:
        return "the server closed the connection without answering"
    if not accept(answer):
        return f"unexpected answer {answer!r} (another program on this port?)"
    return None


def probe_postgres(url: str, timeout: float = 3.0) -> str | None:
    host, port = _host_port(url, 5432)
    # SSLRequest: a PostgreSQL server answers with exactly one byte, S or N, and waits.
    ssl_request = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
    return _probe(host, port, ssl_request, lambda b: b in (b"S", b"N"), timeout)


def probe_rabbitmq(url: str, timeout: float = 3.0) -> str | None:
    default = 5671 if urlsplit(url).scheme == "amqps" else 5672
    host, port = _host_port(url, default)
    # AMQP 0-9-1 protocol header: the broker answers with a method frame (Connection.Start), or with
    # its own protocol header when it wants another version; either way it is an AMQP broker.
    return _probe(host, port, b"AMQP\x00\x00\x09\x01", lambda b: b[:1] == b"\x01" or b[:4] == b"AMQP", timeout)


def check_dependencies(database_url: str, amqp_url: str) -> None:
    problems: list[str] = []
    error = probe_postgres(database_url)
    if error is not None:
        host, port = _host_port(database_url, 5432)
        problems.append(
            f"PostgreSQL is not reachable at {host}:{port} ({redact(database_url)}): {error}.\n"
            f"  Start it with: {PG_START_HINT}"
        )
    error = probe_rabbitmq(amqp_url)
    if error is not None:
        host, port = _host_port(amqp_url, 5672)
        problems.append(
            f"RabbitMQ is not reachable at {host}:{port} ({redact(amqp_url)}): {error}.\n"
            f"  Start it with: {RABBIT_START_HINT}"
        )
    if problems:
        raise DependencyUnavailable("\n".join(problems))


def port_in_use(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status of a GET, or None when nothing answers."""
    request = urllib.request.Request(url, method="GET")  # noqa: S310 - local http URLs built here
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# Processes


def _die_with_parent() -> None:
    # Linux only: the child gets SIGTERM if the runner dies without cleaning up (kill -9 of make).
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class ManagedProcess:
    """One child in its own process group, logging to a file; stopping it stops its whole group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        cwd: Path = REPO_ROOT,
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log.write(f"\n=== {stamp} start: {shlex.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(  # noqa: S603 - argv built by this module
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        if self.popen is None:
            raise StackError(f"{self.name} was never started")
        return self.popen.wait(timeout)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        self.signal_group(sig)
        return self.wait(timeout)

    def stop(self, grace: float = 10.0) -> None:
        stop_all([self], grace)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


def stop_all(processes: Sequence[ManagedProcess], grace: float) -> None:
    """SIGTERM every group at once, SIGKILL whatever is left after the grace period."""
    started = [p for p in processes if p.popen is not None]
    for process in started:
        if process.running():
            process.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in started:
        # Also reaps grandchildren left in the group after the leader exited.
        process.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5.0)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.2,
    process: ManagedProcess | None = None,
    what: str,
) -> None:
    """Poll `condition` until true; fail early when `process` exits, with its log tail."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if process is not None and not process.running():
            raise ProcessFailed(
                f"{process.name} exited with code {process.returncode()} while waiting for {what}.\n"
                f"Last lines of {process.log_path}:\n{process.log_tail()}"
            )
        if time.monotonic() >= deadline:
            log = f"\nLast lines of {process.log_path}:\n{process.log_tail()}" if process is not None else ""
            raise ProcessFailed(f"timed out after {timeout:.0f}s waiting for {what}.{log}")
        time.sleep(interval)
