"""`make run`: the whole stack on this machine until Ctrl-C.

Checks that PostgreSQL and RabbitMQ answer (and says how to start them), migrates every service, starts
auth and waits for it, starts the others and waits until each is ready, then Traefik, prints the banner
(gateway, every process's address, docs, how to log in as admin) and watches: a process that dies (any replica)
stops the stack; Ctrl-C, SIGTERM or SIGHUP stop every process group it started. ITSM_REPLICAS (default 1) runs
that many processes of every service, the n-th on its port + 100 * (n - 1), balanced by the gateway.
The starting and stopping is the test harness's `Stack` (deploy/stack.py); this module adds the operator's
settings, the bootstrap password and the banner.

Not a Procfile runner such as honcho: those start every process at once and stop all when one exits,
with no step before (migrations), no order (auth ready before the others fetch its JWKS), no readiness
wait before saying the stack is up, and a fixed 5 s kill timeout, so the runner would be this module
around them anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import IO, Any

import service_table as services
from gateway import GATEWAY
from processes import DependencyUnavailable, StackError, database_of
from stack import Stack, StackSettings, instance


def bootstrap_password(run_dir: Path, environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The admin bootstrap password and where it came from. Generated once and kept in the run dir,
    because the auth service only uses it while no admin exists."""
    given = environ.get("ITSM_BOOTSTRAP_ADMIN_PASSWORD")
    if given:
        return given, "from ITSM_BOOTSTRAP_ADMIN_PASSWORD"
    stored = run_dir / "bootstrap-admin-password"
    if stored.is_file():
        value = stored.read_text().strip()
        if len(value) >= 12:
            return value, f"generated earlier, kept in {stored}"
    value = secrets.token_urlsafe(18)
    run_dir.mkdir(parents=True, exist_ok=True)
    stored.touch(mode=0o600)
    stored.write_text(value + "\n")
    return value, f"generated now, kept in {stored}"


def admin_already_exists(database_url: str) -> bool:
    """Whether the auth schema already has an active admin, in which case the bootstrap password is not
    applied (the auth service creates `admin` only while no admin exists)."""
    import asyncio

    import asyncpg

    async def query() -> bool:
        connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            exists = await connection.fetchval("SELECT to_regclass('auth.user_account') IS NOT NULL")
            if not exists:
                return False
            return bool(
                await connection.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM auth.user_account WHERE 'admin' = ANY(roles) AND active)"
                )
            )
        finally:
            await connection.close()

    try:
        return asyncio.run(query())
    except Exception:
        return False


def banner(stack: Stack, password: str, origin: str, *, admin_existed: bool = False) -> str:
    s = stack.settings
    gateway = s.gateway_url
    lines = [
        "",
        f"ITSM stack is up. Logs: {s.run_dir}/<name>.log",
        f"  gateway   {gateway}",
    ]
    if s.replicas > 1:
        lines.append(f"  balancing {s.replicas} replicas of each service (ITSM_REPLICAS), each on its own port:")
    width = max([9, *(len(instance(name, replica)) for name, replica in stack.instances())])
    for name, replica in stack.instances():
        lines.append(f"  {instance(name, replica):<{width}} {s.service_url(name, replica)}  (direct, for debugging)")
    absent = [name for name in services.names() if name not in stack.services]
    if absent:
        lines.append(f"  not built yet: {', '.join(absent)} (their routes answer 503)")
    lines.append("API docs (through the gateway):")
    lines.extend(f"  {url}" for url in stack.docs_urls().values())
    if admin_existed:
        lines += [
            f"An active admin already existed in database {database_of(s.database_url)!r}, so the bootstrap",
            "password was NOT applied: log in with that admin's password, or point ITSM_DATABASE_URL at a new",
            "database to start from scratch.",
        ]
    lines += [
        f"Admin bootstrap password ({origin}; used only while no admin exists):",
        f"  {password}",
        "Log in as admin:",
        f"  curl -s -X POST {gateway}/api/v1/auth/token -d grant_type=password -d username=admin "
        f"--data-urlencode {shlex.quote('password=' + password)}",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts the runner in the background leaves SIGINT ignored.
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the ITSM stack locally (services + Traefik).")
    parser.add_argument("--run-dir", type=Path, help="logs and generated config (default .run/)")
    parser.add_argument("--gateway-port", type=int, help="default $ITSM_GATEWAY_PORT or 8000")
    parser.add_argument("--services", nargs="+", choices=services.names(), help="default: every service that exists")
    parser.add_argument("--no-migrate", action="store_true", help="skip python -m itsm_shared.migrate")
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {"die_with_parent": True}
    if args.run_dir is not None:
        overrides["run_dir"] = args.run_dir
    if args.gateway_port is not None:
        overrides["gateway_port"] = args.gateway_port
    if args.services:
        overrides["services"] = tuple(args.services)
    if args.no_migrate:
        overrides["migrate"] = False
    try:
        settings = StackSettings.from_env(**overrides)
    except StackError as exc:
        print(f"Could not start the stack: {exc}", file=sys.stderr)
        return 2
    password, origin = bootstrap_password(settings.run_dir)
    settings = replace(settings, bootstrap_admin_password=password)

    stack = Stack(settings)
    if not stack.services:
        print("No service exists yet (services/<name>/src/<name>/main.py); starting the gateway alone.")
    out: IO[str] = sys.stdout
    with _terminate_as_interrupt():
        try:
            each = f"{settings.replicas} replicas each of " if settings.replicas > 1 else ""
            print(
                f"Starting {each}{', '.join(stack.services)}, then {GATEWAY} (logs in {settings.run_dir}) ...", file=out
            )
            existed = services.ISSUER in stack.services and admin_already_exists(settings.database_url)
            stack.start()
            print(banner(stack, password, origin, admin_existed=existed), file=out, flush=True)
            while True:
                dead = stack.exited()
                if dead:
                    for process in dead:
                        print(
                            f"{process.name} exited with code {process.returncode()}; stopping the stack.\n"
                            f"Last lines of {process.log_path}:\n{process.log_tail()}",
                            file=sys.stderr,
                        )
                    return 1
                time.sleep(0.5)
        except DependencyUnavailable as exc:
            print(exc, file=sys.stderr)
            return 2
        except StackError as exc:
            print(f"Could not start the stack: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\nStopping (at most {settings.stop_grace:.0f}s) ...", file=out, flush=True)
            return 0
        finally:
            # A second Ctrl-C (uv run also forwards the first one) must not cut the shutdown short.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
