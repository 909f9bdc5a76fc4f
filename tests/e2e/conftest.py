"""The whole stack as real processes, started the way `make run` starts it (deploy/stack.py), on free ports
with its own database and exchange. Tests talk to it only through the gateway and the broker. The services,
their routes and their queues are those of the table (deploy/services.toml). Events are watched with the shared
`EventProbe`: the `itsm` plugin's `listen` fixture opens probes on the stack's exchange (`events_exchange`)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from itsm_shared.testing import remove_topology

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "deploy"))

import service_table as services  # noqa: E402
import stack as stack_module  # noqa: E402

# The webhook service delivers to a receiver on this machine (test_webhooks.py): private addresses and plain http
# allowed (development only), a short retry schedule, and claims that run out soon after a kill -9.
WEBHOOK_ENV = {
    "ITSM_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
    "ITSM_WEBHOOK_RETRY_SCHEDULE": "0,1,1,2",
    "ITSM_WEBHOOK_CLAIM_SECONDS": "12",
    "ITSM_WEBHOOK_POLL_SECONDS": "0.2",
}

# A change's plans and a low-risk assessment (CONTRACT §6), for the tests that open changes through the gateway.
PLANS = {"implementation_plan": "roll out", "backout_plan": "roll back", "test_plan": "smoke test"}
LOW_RISK = {
    "business_impact": "low",
    "affected_users": "few",
    "outage_required": "no",
    "tested": "fully",
    "backout": "simple",
    "experience": "routine",
    "business_hours": "no",
}


@contextlib.contextmanager
def isolated_stack(
    run_dir: Path, *, replicas: int = 1, service_env: Mapping[str, Mapping[str, str]] | None = None
) -> Iterator[stack_module.Stack]:
    """A whole stack of its own (database, exchange, queues, broker users, ports), removed when the block ends.
    `replicas` processes of every service; `service_env` per service (default: the webhook service's WEBHOOK_ENV)."""
    settings = stack_module.StackSettings.isolated(
        run_dir,
        replicas=replicas,
        die_with_parent=True,
        service_env={"webhook": WEBHOOK_ENV} if service_env is None else service_env,
    )
    running = stack_module.Stack(settings)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        running.drop_database()
        running.drop_broker_users()
        # The consumer queues of the table (test_service_table.py checks the services declare exactly
        # those) under this stack's prefix, with their dead-letter queues, off the shared broker too.
        queues = tuple(settings.queue_prefix + q for name in running.services for q in services.get(name).queues)
        asyncio.run(remove_topology(settings.amqp_url, settings.exchange, settings.dead_letter_exchange, queues))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack_module.Stack]:
    with isolated_stack(tmp_path_factory.mktemp("e2e-run")) as running:
        yield running


@pytest.fixture(scope="session")
def gateway(stack: stack_module.Stack) -> str:
    return stack.settings.gateway_url


@pytest.fixture
async def http(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, timeout=15) as client:
        yield client


@pytest.fixture
async def amqp(stack: stack_module.Stack) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(stack.settings.amqp_url)
    yield connection
    await connection.close()


@pytest.fixture
def events_exchange(stack: stack_module.Stack) -> str:
    """The stack's events exchange (its services declared it on start), for the plugin's `listen` fixture."""
    return stack.settings.exchange


async def token(http: httpx.AsyncClient, username: str, password: str) -> dict[str, Any]:
    response = await http.post(
        "/api/v1/auth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


async def create_user(
    http: httpx.AsyncClient, admin: str, username: str, password: str, roles: list[str]
) -> dict[str, Any]:
    """A user made by the admin through the auth API (201), as the API returns it."""
    made = await http.post(
        "/api/v1/auth/users",
        headers=bearer(admin),
        json={"username": username, "password": password, "roles": roles},
    )
    assert made.status_code == 201, made.text
    return dict(made.json())


@pytest.fixture
async def admin(http: httpx.AsyncClient, stack: stack_module.Stack) -> str:
    password = stack.settings.bootstrap_admin_password
    assert password
    return str((await token(http, "admin", password))["access_token"])


PASSWORD = "a perfectly fine password"


@dataclass
class User:
    id: str
    username: str
    access_token: str

    def headers(self, correlation_id: str | None = None, **extra: str) -> dict[str, str]:
        headers = {**bearer(self.access_token), **extra}
        if correlation_id is not None:
            headers["X-Correlation-ID"] = correlation_id
        return headers


async def new_user(http: httpx.AsyncClient, admin: str, *roles: str) -> User:
    username = f"inc{uuid.uuid4().hex[:10]}"
    made = await create_user(http, admin, username, PASSWORD, list(roles))
    return User(made["id"], username, (await token(http, username, PASSWORD))["access_token"])


@pytest.fixture
async def agent(http: httpx.AsyncClient, admin: str) -> User:
    return await new_user(http, admin, "agent")


@pytest.fixture
async def requester(http: httpx.AsyncClient, admin: str) -> User:
    return await new_user(http, admin, "requester")
