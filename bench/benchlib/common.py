"""What every benchmark starts from: where the repository's files are, the deploy/ modules it drives (the harness
`stack`, `processes`, the table of services) on sys.path, and the lifetime of what it starts: signals turned into
KeyboardInterrupt, cleanup that retries, uvicorn servers started as the harness starts the services, the bare app.

The rest is by job: figures.py (percentiles, ratios), machine.py (the machine line), cpu.py (CPU accounting from
/proc), table.py (the summary table), scratch.py (scratch databases, exchanges, isolated stack settings),
tokens.py (an agent's token)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_ROOT / "bench"
sys.path.insert(0, str(REPO_ROOT / "deploy"))

import processes  # noqa: E402  (deploy/*.py, as tests/e2e imports them)
import service_table as services  # noqa: E402
import stack as stack_module  # noqa: E402

__all__ = [
    "BENCH_DIR",
    "REPO_ROOT",
    "cleanup",
    "ignore_signals",
    "processes",
    "services",
    "signals_as_interrupt",
    "stack_module",
    "start_bare_app",
    "uvicorn_process",
]

# ---------------------------------------------------------------- process lifetime


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP (and SIGINT when ignored by a background shell) raise KeyboardInterrupt, so the
    cleanup in `finally` blocks runs however the benchmark is stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def ignore_signals() -> None:
    """During cleanup: a second Ctrl-C must not cut it short."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def cleanup(steps: Sequence[tuple[str, Callable[[], object]]], *, attempts: int = 12, delay: float = 5.0) -> None:
    """Run every cleanup step, each retried for a minute while PostgreSQL or RabbitMQ is briefly away (other
    suites on this machine restart them); report what still failed on stderr."""
    for what, action in steps:
        for attempt in range(1, attempts + 1):
            try:
                action()
                break
            except Exception as exc:
                if attempt == attempts:
                    print(f"cleanup failed: {what}: {exc}", file=sys.stderr)
                else:
                    time.sleep(delay)


def uvicorn_process(
    name: str, app: str, port: int, env: dict[str, str], log: Path, *, app_dir: Path
) -> processes.ManagedProcess:
    """A uvicorn server started like deploy/stack.py starts the services (same flags), dying with us."""
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--app-dir",
        str(app_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-server-header",
        "--timeout-graceful-shutdown",
        "5",
    ]
    return processes.ManagedProcess(name, argv, {**os.environ, **env}, log, die_with_parent=True)


def start_bare_app(run_dir: Path, env: dict[str, str]) -> tuple[processes.ManagedProcess, str]:
    """bench/benchlib/bare_app.py under uvicorn on a free port; returns it and its base URL once healthy."""
    port = processes.free_port()
    bare = uvicorn_process("bare", "benchlib.bare_app:app", port, env, run_dir / "bare.log", app_dir=BENCH_DIR)
    bare.start()
    url = f"http://127.0.0.1:{port}"
    processes.wait_until(
        lambda: processes.http_status(f"{url}/healthz") == 200, timeout=60, process=bare, what="the bare app"
    )
    return bare, url
