"""The harness and the runner (deploy/stack.py, deploy/processes.py, deploy/gateway.py, deploy/run.py): probes,
process groups, settings, and one real run of the auth service behind the gateway with a fault point, the way
the e2e tests drive it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import configs
import gateway
import httpx
import processes
import pytest
import run
import service_table as services
import stack
import yaml

pytestmark = pytest.mark.timeout(180)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_for(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def closed_port() -> int:
    return processes.free_port()


# ------------------------------------------------------------------------------------------ probes


def test_unreachable_dependencies_say_where_and_how_to_start_them(closed_port: int) -> None:
    with pytest.raises(processes.DependencyUnavailable) as caught:
        processes.check_dependencies(
            f"postgresql://postgres:secret@127.0.0.1:{closed_port}/itsm",
            f"amqp://guest:guest@127.0.0.1:{closed_port}/",
        )
    message = str(caught.value)
    assert f"PostgreSQL is not reachable at 127.0.0.1:{closed_port}" in message
    assert processes.PG_START_HINT in message
    assert f"RabbitMQ is not reachable at 127.0.0.1:{closed_port}" in message
    assert processes.RABBIT_START_HINT in message
    assert "secret" not in message


def test_probes_tell_a_server_of_another_kind() -> None:
    # Something that greets every connection the way an SSH server does.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def greet() -> None:
            for _ in range(2):
                connection, _ = server.accept()
                with connection:
                    connection.sendall(b"SSH-2.0-stub\r\n")

        thread = threading.Thread(target=greet, daemon=True)
        thread.start()
        assert "unexpected answer" in (processes.probe_postgres(f"postgresql://127.0.0.1:{port}/itsm") or "")
        assert "unexpected answer" in (processes.probe_rabbitmq(f"amqp://127.0.0.1:{port}/") or "")
        thread.join(timeout=5)


def test_probes_accept_the_local_servers() -> None:
    database = os.environ.get("ITSM_TEST_DATABASE_URL") or stack.DEFAULT_DATABASE_URL
    broker = os.environ.get("ITSM_TEST_AMQP_URL") or stack.DEFAULT_AMQP_URL
    if processes.probe_postgres(database) or processes.probe_rabbitmq(broker):
        pytest.skip("no local PostgreSQL/RabbitMQ")
    processes.check_dependencies(database, broker)


def test_urls() -> None:
    url = "postgresql+asyncpg://postgres:pw@db:5433/itsm?sslmode=disable"
    assert (
        processes.with_database(url, "itsm_e2e_1")
        == "postgresql+asyncpg://postgres:pw@db:5433/itsm_e2e_1?sslmode=disable"
    )
    assert processes.database_of(url) == "itsm"
    assert processes.redact(url) == "postgresql+asyncpg://postgres:***@db:5433/itsm?sslmode=disable"
    assert processes.redact("amqp://localhost/") == "amqp://localhost/"


# ------------------------------------------------------------------------------------------ config


def test_rendered_static_config_differs_only_in_the_local_values(tmp_path: Path) -> None:
    rendered = yaml.safe_load(gateway.render_traefik_config(tmp_path, host="127.0.0.1", port=18555).read_text())
    original = yaml.safe_load(gateway.TRAEFIK_STATIC.read_text())
    assert rendered["entryPoints"]["web"]["address"] == "127.0.0.1:18555"
    # The dynamic file beside it is made from the table, as the committed one is.
    assert rendered["providers"]["file"]["filename"] == str(tmp_path / "dynamic.yml")
    assert (tmp_path / "dynamic.yml").read_text() == configs.render_dynamic()
    assert rendered["accessLog"]["filePath"] == str(tmp_path / "gateway-access.log")
    for config in (rendered, original):
        del config["entryPoints"]["web"]["address"]
        del config["providers"]["file"]["filename"]
        config["accessLog"].pop("filePath", None)
    assert rendered == original


def test_gateway_env_has_no_upstream_for_absent_services() -> None:
    inherited = {"PATH": "/bin", "ITSM_AUDIT_UPSTREAM": "http://stale:1"}
    env = gateway.gateway_env(
        {"auth": "http://127.0.0.1:1", "audit": None}, api_rate_limit=7, login_rate_limit=3, base=inherited
    )
    assert env["ITSM_AUTH_UPSTREAM"] == "http://127.0.0.1:1"
    assert "ITSM_AUDIT_UPSTREAM" not in env
    assert env["ITSM_API_RATE_LIMIT"] == "7"
    assert env["ITSM_LOGIN_RATE_LIMIT"] == "3"
    assert env["PATH"] == "/bin"


def test_settings_from_env_and_isolated(tmp_path: Path) -> None:
    settings = stack.StackSettings.from_env(
        {"ITSM_GATEWAY_PORT": "9000", "ITSM_API_RATE_LIMIT": "7", "ITSM_INCIDENT_PORT": "9102"}
    )
    assert settings.gateway_url == "http://127.0.0.1:9000"
    assert settings.api_rate_limit == 7
    assert settings.port("incident") == 9102
    assert settings.port("auth") == services.get("auth").port

    one, two = stack.StackSettings.isolated(tmp_path), stack.StackSettings.isolated(tmp_path)
    assert one.database_name != two.database_name
    assert one.database_name is not None and one.database_name.startswith("itsm_e2e_")
    assert processes.database_of(one.database_url) == one.database_name
    assert one.exchange != two.exchange != stack.DEFAULT_EXCHANGE
    ports = [one.gateway_port, *one.service_ports.values()]
    assert len(set(ports)) == len(ports)
    assert not set(ports) & {gateway.DEFAULT_GATEWAY_PORT, *(s.port for s in services.table())}


def test_service_env_follows_the_interfaces(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("itsm_shared.provision")
    from itsm_shared.broker_users import url_as

    monkeypatch.setenv("ITSM_FAULT_POINT", "inherited.from.the.shell")
    settings = stack.StackSettings.isolated(tmp_path, services=(), service_env={"audit": {"ITSM_LOG_LEVEL": "DEBUG"}})
    runner = stack.Stack(settings)
    env = runner.service_env("incident")
    assert env["ITSM_DATABASE_URL"].startswith("postgresql://incident_app")
    assert processes.database_of(env["ITSM_DATABASE_URL"]) == settings.database_name
    assert env["ITSM_AMQP_URL"] == url_as(settings.amqp_url, f"{settings.broker_user_prefix}incident")
    assert env["ITSM_BROKER_USER_PREFIX"] == settings.broker_user_prefix
    assert env["ITSM_EXCHANGE"] == settings.exchange
    assert env["ITSM_JWKS_URL"] == f"http://127.0.0.1:{settings.port('auth')}/api/v1/auth/jwks.json"
    assert "ITSM_FAULT_POINT" not in env
    assert "ITSM_BOOTSTRAP_ADMIN_PASSWORD" not in env
    assert runner.service_env("auth")["ITSM_BOOTSTRAP_ADMIN_PASSWORD"] == settings.bootstrap_admin_password
    assert runner.service_env("audit")["ITSM_LOG_LEVEL"] == "DEBUG"
    assert runner.service_env("change", {"ITSM_FAULT_POINT": "outbox.before_publish"})["ITSM_FAULT_POINT"] == (
        "outbox.before_publish"
    )


def test_only_the_auth_service_is_given_the_kek(
    monkeypatch: pytest.MonkeyPatch, generated_key_file: Callable[[str, str], tuple[stack.Stack, Path]]
) -> None:
    """Issue #11, finding 1: the key-encryption key of the signing keys reaches the auth process only; the runner
    generates one per run dir (0600, kept) unless the operator gives ITSM_AUTH_KEK or ITSM_AUTH_KEK_FILE."""
    runner, path = generated_key_file("auth", "ITSM_AUTH_KEK")
    assert len(base64.urlsafe_b64decode(path.read_text().strip())) == 32
    kek = path.read_text()
    assert runner.service_env("auth")["ITSM_AUTH_KEK_FILE"] == str(path) and path.read_text() == kek  # kept
    monkeypatch.setenv("ITSM_AUTH_KEK", "from-the-operator")  # exported in the shell that runs `make run`
    assert runner.service_env("auth")["ITSM_AUTH_KEK"] == "from-the-operator"
    assert "ITSM_AUTH_KEK_FILE" not in runner.service_env("auth")
    for name in services.names():
        if name != "auth":
            assert not {"ITSM_AUTH_KEK", "ITSM_AUTH_KEK_FILE"} & set(runner.service_env(name)), name


def test_bootstrap_password_is_generated_once(tmp_path: Path) -> None:
    first, origin = run.bootstrap_password(tmp_path, {})
    assert len(first) >= 12
    assert "generated now" in origin
    stored = tmp_path / "bootstrap-admin-password"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    again, origin = run.bootstrap_password(tmp_path, {})
    assert again == first
    assert "generated earlier" in origin
    given, _ = run.bootstrap_password(tmp_path, {"ITSM_BOOTSTRAP_ADMIN_PASSWORD": "from-the-env-123"})
    assert given == "from-the-env-123"


def test_banner_says_where_everything_is_and_how_to_log_in(tmp_path: Path) -> None:
    settings = stack.StackSettings(
        services=("auth", "incident"), run_dir=tmp_path, gateway_port=18000, bootstrap_admin_password="x" * 12
    )
    text = run.banner(stack.Stack(settings), "pass word-123", "generated now")
    assert "  gateway   http://127.0.0.1:18000" in text
    assert f"  incident  http://127.0.0.1:{services.get('incident').port}  (direct, for debugging)" in text
    assert "http://127.0.0.1:18000/api/v1/incidents/docs" in text
    assert "not built yet: problem, change, audit" in text
    assert (
        "curl -s -X POST http://127.0.0.1:18000/api/v1/auth/token -d grant_type=password -d username=admin "
        "--data-urlencode 'password=pass word-123'"
    ) in text
    assert "Ctrl-C stops everything." in text


def test_busy_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = stack.StackSettings.isolated(tmp_path, services=(), gateway_port=port)
        if processes.probe_postgres(settings.database_url) or processes.probe_rabbitmq(settings.amqp_url):
            pytest.skip("no local PostgreSQL/RabbitMQ")
        with pytest.raises(processes.StackError, match=f"traefik port {port}"):
            stack.Stack(settings).start()


# ------------------------------------------------------------------------------------------ processes


@pytest.fixture
def stubborn(tmp_path: Path) -> Iterator[tuple[processes.ManagedProcess, Path]]:
    """A shell ignoring SIGTERM with a child of its own (the ignore is inherited)."""
    pid_file = tmp_path / "child.pid"
    script = f"trap '' TERM; sleep 300 & echo $! > {pid_file}; wait"
    process = processes.ManagedProcess("stubborn", ["sh", "-c", script], dict(os.environ), tmp_path / "stubborn.log")
    process.start()
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    yield process, pid_file
    process.signal_group(signal.SIGKILL)


def test_stop_escalates_to_sigkill_for_the_whole_group(stubborn: tuple[processes.ManagedProcess, Path]) -> None:
    process, pid_file = stubborn
    child = int(pid_file.read_text())
    assert alive(child)
    started = time.monotonic()
    processes.stop_all([process], grace=0.5)
    # Not waiting for the 300 s the child would live; how fast exactly is not the point.
    assert time.monotonic() - started < 60
    assert process.returncode() == -signal.SIGKILL
    wait_for(lambda: not alive(child), timeout=5)


def test_wait_until_fails_fast_with_the_log_of_a_dead_process(tmp_path: Path) -> None:
    process = processes.ManagedProcess(
        "crasher", ["sh", "-c", "echo boom-42; exit 3"], dict(os.environ), tmp_path / "c.log"
    )
    process.start()
    with pytest.raises(processes.ProcessFailed, match="exited with code 3") as caught:
        processes.wait_until(lambda: False, timeout=30, process=process, what="never")
    assert "boom-42" in str(caught.value)


# ------------------------------------------------------------------------------------------ real run


async def _delete_broker_objects(settings: stack.StackSettings) -> None:
    """The exchanges and queue itsm_shared.broker declares for this run's exchange names."""
    import aio_pika

    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        for kind, name in (
            ("queue", f"{settings.exchange}.unrouted"),
            ("exchange", settings.exchange),
            ("exchange", f"{settings.exchange}.unrouted"),
            ("exchange", settings.dead_letter_exchange),
        ):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                if kind == "queue":
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)


def test_real_auth_behind_the_gateway_dies_at_a_fault_point_and_restarts(tmp_path: Path) -> None:
    """What the e2e suite does: its own database and exchange, free ports, kill -9 by a fault point."""
    if "auth" not in stack.discover_services():
        pytest.skip("the auth service does not exist yet")
    settings = stack.StackSettings.isolated(tmp_path, services=("auth",), ready_timeout=60)
    if processes.probe_postgres(settings.database_url) or processes.probe_rabbitmq(settings.amqp_url):
        pytest.skip("no local PostgreSQL/RabbitMQ")
    runner = stack.Stack(settings)
    form = {"grant_type": "password", "username": "admin", "password": settings.bootstrap_admin_password or ""}
    try:
        runner.start()
        with httpx.Client(base_url=settings.gateway_url, timeout=15) as client:
            token = client.post("/api/v1/auth/token", data=form)
            assert token.status_code == 200, token.text
            assert token.json()["token_type"] == "bearer"
            assert client.get("/api/v1/incidents").status_code == 503  # not started: no upstream

            # Armed, auth dies in its outbox relay before publishing the next event: a login's, or
            # one the previous (killed) process left unpublished, possibly before it is even ready.
            runner.restart_service("auth", {"ITSM_FAULT_POINT": "outbox.before_publish"}, wait=False)
            auth = runner.processes["auth"]

            def died() -> bool:
                if auth.running() and processes.http_status(f"{settings.service_url('auth')}/readyz") == 200:
                    client.post("/api/v1/auth/token", data=form)
                return not auth.running()

            wait_for(died, timeout=60)
            assert runner.wait_exit("auth", timeout=5) == -signal.SIGKILL
            assert client.get("/api/v1/auth/jwks.json").status_code == 503

            runner.restart_service("auth")  # without the fault point
            assert "ITSM_FAULT_POINT" not in runner.processes["auth"].env
            assert client.post("/api/v1/auth/token", data=form).status_code == 200
        pids = [p.pid for p in runner.processes.values()]
    finally:
        runner.stop()
        runner.drop_database()
        runner.drop_broker_users()
        asyncio.run(_delete_broker_objects(settings))
    assert all(pid is not None and not alive(pid) for pid in pids)
