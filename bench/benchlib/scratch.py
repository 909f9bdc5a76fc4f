"""Scratch databases and broker objects, and the settings of an isolated stack (its own database, exchange,
queue prefix and broker users) for a benchmark."""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchlib.common import processes, services, stack_module


def plain_dsn(url: str) -> str:
    """A postgresql:// URL asyncpg takes (the stack's URLs may name the SQLAlchemy driver)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_scratch_database(admin_url: str, prefix: str) -> tuple[str, str]:
    """A new empty database on the server of `admin_url`; returns (name, its admin URL)."""
    import asyncpg

    name = f"{prefix}_{secrets.token_hex(5)}"
    connection = await asyncpg.connect(plain_dsn(processes.with_database(admin_url, "postgres")))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name, processes.with_database(admin_url, name)


async def drop_scratch_database(admin_url: str, name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(plain_dsn(processes.with_database(admin_url, "postgres")))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def queues_with_prefix(prefix: str) -> list[str]:
    """Queue names starting with `prefix` (rabbitmqctl when it is installed and may talk to the broker)."""
    try:
        out = subprocess.run(
            ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().startswith(prefix)]


async def remove_stack_topology(settings: stack_module.StackSettings, known_queues: Iterable[str] = ()) -> None:
    """Exchanges of an isolated stack and the consumer queues (and their dead-letter queues) its services
    declared under its prefix."""
    import aio_pika

    names = {*queues_with_prefix(settings.queue_prefix), *(settings.queue_prefix + q for q in known_queues)}
    queues = {q.removesuffix(".dlq") for q in names if q != f"{settings.exchange}.unrouted"}
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        for queue in (f"{settings.exchange}.unrouted", *sorted(queues), *(f"{q}.dlq" for q in sorted(queues))):
            await channel.queue_delete(queue)
        for exchange in (settings.exchange, f"{settings.exchange}.unrouted", settings.dead_letter_exchange):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


# Every consumer queue of the table (deploy/services.toml), in case rabbitmqctl cannot list them.
ALL_QUEUES = tuple(q for s in services.table() for q in s.queues)
INCIDENT_QUEUES = services.get("incident").queues


def bench_settings(run_dir: Path, **overrides: Any) -> stack_module.StackSettings:
    """An isolated stack (free ports, its own database, exchange and queue prefix) named for the benchmarks. The
    harness gives each service what it needs as under `make run` (keys and passwords kept in `run_dir`)."""
    token = secrets.token_hex(4)
    values: dict[str, Any] = {
        "database_name": f"itsm_bench_{token}",
        "exchange": f"itsm_bench_{token}.events",
        "dead_letter_exchange": f"itsm_bench_{token}.dlx",
        "queue_prefix": f"itsm_bench_{token}.",
        "die_with_parent": True,
    }
    if "broker_user_prefix" in {f.name for f in dataclasses.fields(stack_module.StackSettings)}:
        values["broker_user_prefix"] = f"itsm_bench_{token}."  # one broker user per service, when the harness has them
    values.update(overrides)
    return stack_module.StackSettings.isolated(run_dir, **values)
