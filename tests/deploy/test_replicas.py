"""Replicas (issue #13, point 1): ITSM_REPLICAS processes of every service, each on its own port, behind one gateway
route per service that balances them and leaves out a replica whose health check fails.

The settings and the banner; the real Traefik with deploy/traefik in front of stub replicas (one dead, one that
comes back, one that dies); and the harness running two real auth processes behind the gateway, one killed -9
and started again while logins go on through the gateway."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import gateway
import httpx
import processes
import pytest
import run
import service_table as services
import stack
from gateway_stubs import StubServer, stub_backend
from test_stack import _delete_broker_objects

pytestmark = pytest.mark.timeout(180)


def eventually(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not met in {timeout:.0f}s"
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------ settings


def test_replicas_from_the_environment_listen_a_step_apart() -> None:
    settings = stack.StackSettings.from_env({"ITSM_REPLICAS": "3", "ITSM_INCIDENT_PORT": "9102"})
    assert settings.replicas == 3
    assert [settings.port("incident", r) for r in range(3)] == [9102, 9202, 9302]
    assert settings.service_urls("auth") == [
        f"http://127.0.0.1:{services.get('auth').port + 100 * r}" for r in range(3)
    ]
    assert [stack.instance("incident", r) for r in range(3)] == ["incident", "incident-2", "incident-3"]
    assert stack.StackSettings.from_env({}).replicas == 1
    assert stack.StackSettings.from_env({"ITSM_REPLICAS": ""}).replicas == 1
    for wrong in ("0", "-1", "two", "1.5"):
        with pytest.raises(processes.StackError, match="ITSM_REPLICAS must be a whole number"):
            stack.StackSettings.from_env({"ITSM_REPLICAS": wrong})


def test_isolated_replicas_get_free_ports_of_their_own(tmp_path: Path) -> None:
    settings = stack.StackSettings.isolated(tmp_path, replicas=3)
    ports = [settings.gateway_port, *(settings.port(n, r) for n in services.names() for r in range(3))]
    assert len(set(ports)) == len(ports)
    assert not set(ports) & {gateway.DEFAULT_GATEWAY_PORT, *(s.port for s in services.table())}
    assert all(settings.port(n) == settings.service_ports[n] for n in services.names())


def test_ports_that_collide_are_refused_before_anything_starts(tmp_path: Path) -> None:
    """incident's second replica would take auth's port: refused with both names, before anything is started."""
    environ = {
        "ITSM_REPLICAS": "2",
        "ITSM_AUTH_PORT": "18202",
        "ITSM_INCIDENT_PORT": "18102",
        "ITSM_GATEWAY_PORT": "18000",
    }
    settings = stack.StackSettings.from_env(environ, run_dir=tmp_path, services=("auth", "incident"))
    if processes.probe_postgres(settings.database_url) or processes.probe_rabbitmq(settings.amqp_url):
        pytest.skip("no local PostgreSQL/RabbitMQ")
    runner = stack.Stack(settings)
    with pytest.raises(processes.StackError, match="auth and incident-2 on 18202"):
        runner.start()
    assert not runner.processes
    past = stack.StackSettings.from_env(
        {"ITSM_REPLICAS": "3", "ITSM_AUTH_PORT": "65400"}, run_dir=tmp_path, services=("auth",)
    )
    with pytest.raises(processes.StackError, match="no such port: auth-3 port 65600"):
        stack.Stack(past).start()


def test_the_banner_gives_the_address_of_every_replica(tmp_path: Path) -> None:
    settings = stack.StackSettings(
        services=("auth", "incident"), run_dir=tmp_path, gateway_port=18000, replicas=2, bootstrap_admin_password="x"
    )
    text = run.banner(stack.Stack(settings), "pass word-123", "generated now")
    assert "balancing 2 replicas of each service (ITSM_REPLICAS)" in text
    for name, replica in (("auth", 0), ("auth", 1), ("incident", 0), ("incident", 1)):
        port = services.get(name).port + 100 * replica
        assert f"  {stack.instance(name, replica):<10} http://127.0.0.1:{port}  (direct, for debugging)" in text


def test_gateway_env_lists_every_replica() -> None:
    env = gateway.gateway_env(
        {"incident": ["http://127.0.0.1:1", "http://127.0.0.1:2"], "auth": "http://127.0.0.1:3", "audit": []},
        api_rate_limit=7,
        login_rate_limit=3,
        base={},
    )
    assert env["ITSM_INCIDENT_UPSTREAM"] == "http://127.0.0.1:1,http://127.0.0.1:2"
    assert env["ITSM_AUTH_UPSTREAM"] == "http://127.0.0.1:3"
    assert "ITSM_AUDIT_UPSTREAM" not in env
    with pytest.raises(processes.StackError, match="comma"):
        gateway.gateway_env({"auth": ["http://a,b"]}, api_rate_limit=1, login_rate_limit=1, base={})


# ------------------------------------------------------------------------------------------ Traefik, stub replicas


@pytest.fixture
def replicas() -> Iterator[list[StubServer]]:
    with stub_backend("incident#1") as one, stub_backend("incident#2") as two:
        yield [one, two]


def test_the_gateway_balances_replicas_and_leaves_out_a_dead_one(tmp_path: Path, replicas: list[StubServer]) -> None:
    """Two live replicas and one that refuses connections (killed): after a health check every request is answered,
    by both live ones in turn; the dead one, started again on its port, is taken back; a replica that dies is left
    out in turn. Between a death and the next check its share of requests is 503, never 502."""
    dead, port = processes.free_port(), processes.free_port()
    upstreams = {"incident": [*(r.url for r in replicas), f"http://127.0.0.1:{dead}"]}
    traefik = gateway.start_gateway(tmp_path, port=port, upstreams=upstreams, api_rate_limit=1000)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            def served(count: int) -> Counter[str]:
                seen: Counter[str] = Counter()
                for _ in range(count):
                    response = client.get("/api/v1/incidents/x")
                    assert response.status_code in (200, 503), response.status_code
                    seen[response.json()["service"] if response.status_code == 200 else "503"] += 1
                return seen

            eventually(lambda: "503" not in served(12), what="the dead replica left out")
            assert served(20) == {"incident#1": 10, "incident#2": 10}  # round-robin over the live ones

            with stub_backend("incident#3", dead):
                eventually(lambda: "incident#3" in served(6), what="the restarted replica taken back")
                assert set(served(30)) == {"incident#1", "incident#2", "incident#3"}
            eventually(lambda: set(served(12)) == {"incident#1", "incident#2"}, what="the replica gone again")
    finally:
        traefik.stop(grace=5)


# ------------------------------------------------------------------------------------------ the harness, for real


def test_two_auth_replicas_behind_the_gateway_one_killed_and_restarted(tmp_path: Path) -> None:
    """The harness with replicas=2: auth and auth-2 on their own ports and logs, both serving through the gateway;
    auth-2 killed -9, logins through the gateway go on (one in the window before the health check may be 503, never
    a wrong answer); auth-2 started again and back in the gateway's rotation."""
    if "auth" not in stack.discover_services():
        pytest.skip("the auth service does not exist yet")
    settings = stack.StackSettings.isolated(tmp_path, services=("auth",), replicas=2, ready_timeout=60)
    if processes.probe_postgres(settings.database_url) or processes.probe_rabbitmq(settings.amqp_url):
        pytest.skip("no local PostgreSQL/RabbitMQ")
    runner = stack.Stack(settings)
    form = {"grant_type": "password", "username": "admin", "password": settings.bootstrap_admin_password or ""}
    access_log = tmp_path / gateway.ACCESS_LOG
    try:
        runner.start()
        assert sorted(runner.processes) == ["auth", "auth-2", "traefik"]
        assert runner.log_path("auth", replica=1) == tmp_path / "auth-2.log"
        addresses = [f"127.0.0.1:{settings.port('auth', r)}" for r in range(2)]
        with httpx.Client(base_url=settings.gateway_url, timeout=15) as client:
            for _ in range(4):
                assert client.post("/api/v1/auth/token", data=form).status_code == 200
            assert all(gateway.served_by(access_log, a) for a in addresses), "both replicas serve"

            assert runner.kill_service("auth", signal.SIGKILL, replica=1) == -signal.SIGKILL
            statuses = Counter(client.post("/api/v1/auth/token", data=form).status_code for _ in range(6))
            assert set(statuses) <= {200, 503}, statuses
            eventually(
                lambda: all(client.post("/api/v1/auth/token", data=form).status_code == 200 for _ in range(4)),
                what="logins answered by the live replica alone",
            )
            runner.restart_service("auth", replica=1)  # returns once the gateway sends it requests again
            assert runner.process("auth", 1).running() and runner.process("auth").running()
    finally:
        runner.stop()
        runner.drop_database()
        runner.drop_broker_users()
        asyncio.run(_delete_broker_objects(settings))
