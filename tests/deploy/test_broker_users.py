"""Issue #11, finding 2: one RabbitMQ user per service, everywhere the stack runs. `make run` and the test harness
create them (deploy/broker_accounts.py, with rabbitmqctl), docker-compose.yml loads them from its definitions, the
Helm chart has a User, a Permission and a TopicPermission for each; all three grant what itsm_shared.broker_users
says, and each service is given its own user's password and no other's."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import aio_pika
import broker_accounts
import pytest
import service_table as services
import stack
import yaml
from itsm_shared.broker_users import Topology, permissions, topic_permissions
from itsm_shared.settings import ServiceSettings
from itsm_shared.trust import REPLAYER
from k8s_charts import DATA, render, the
from processes import StackError, probe_rabbitmq

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_loads_the_runners_users_into_the_broker(compose: dict[str, Any]) -> None:
    broker = compose["services"]["rabbitmq"]
    targets = {c["source"]: c["target"] for c in broker["configs"]}
    assert targets["rabbitmq_definitions"] == "/etc/rabbitmq/definitions.json"
    conf = compose["configs"]["rabbitmq_load_definitions"]["content"]
    assert "load_definitions = /etc/rabbitmq/definitions.json" in conf
    assert targets["rabbitmq_load_definitions"].startswith("/etc/rabbitmq/conf.d/")
    assert "environment" not in broker, "no default user: the definitions are the users"
    document = json.loads(compose["configs"]["rabbitmq_definitions"]["content"].replace("$$", "$"))
    users = {u["name"]: u for u in document["users"]}
    granted = {p["user"]: p for p in document["permissions"]}
    topics = {p["user"]: p for p in document["topic_permissions"]}
    names = Topology()  # compose's names: fixed in its x-service-env
    for name in services.names():
        assert (
            users[name]["password"] == f"${{ITSM_AMQP_PASSWORD_{name.upper()}:?the password of {name}'s broker user}}"
        )
        assert users[name]["tags"] == []
        assert {k: v for k, v in granted[name].items() if k not in ("user", "vhost")} == permissions(name, names)
        assert {k: v for k, v in topics[name].items() if k not in ("user", "vhost")} == topic_permissions(name, names)
    assert set(users) == {*services.names(), "${ITSM_RABBITMQ_USER:-itsm}"}


def test_compose_gives_each_service_its_own_broker_password_only(compose: dict[str, Any]) -> None:
    anchors = compose["x-service-env"]
    assert (anchors["ITSM_EXCHANGE"], anchors["ITSM_DEAD_LETTER_EXCHANGE"]) == ("itsm.events", "itsm.dlx")
    assert anchors["ITSM_QUEUE_PREFIX"] == anchors["ITSM_BROKER_USER_PREFIX"] == ""
    for name in services.names():
        entry = compose["services"][name]
        env = entry["environment"]
        assert env["ITSM_AMQP_URL"] == f"amqp://{name}@rabbitmq:5672/", "its own user, no password in the URL"
        assert env["ITSM_AMQP_PASSWORD_FILE"] == f"/run/secrets/{name}_amqp_password"
        assert compose["secrets"][f"{name}_amqp_password"] == {"environment": f"ITSM_AMQP_PASSWORD_{name.upper()}"}
        theirs = {s for s in entry["secrets"] if s.endswith("_amqp_password")}
        assert theirs == {f"{name}_amqp_password"}
        assert not any(s.endswith("_amqp_password") for s in compose["services"][f"migrate-{name}"].get("secrets", []))


def test_the_chart_grants_each_user_what_the_runner_does() -> None:
    data = render(DATA)
    names = Topology()
    for name in services.names():
        user = f"itsm-{name}"
        assert the(data, "Permission", user)["spec"]["permissions"] == permissions(name, names)
        topic = the(data, "TopicPermission", user)["spec"]
        assert topic["userReference"] == {"name": user} and topic["vhost"] == "/"
        assert topic["permissions"] == topic_permissions(name, names)
    odd = Topology(exchange="x-y.events", dead_letter_exchange="x.dlx", queue_prefix="t.")
    values = {
        "rabbitmq": {"exchange": odd.exchange, "deadLetterExchange": odd.dead_letter_exchange, "queuePrefix": "t."}
    }
    other = render(DATA, values)
    audit = the(other, "Permission", f"itsm-{REPLAYER}")["spec"]["permissions"]
    assert audit["write"] == r"^(x-y\.events\.unrouted|x\.dlx|amq\.default|t\.audit\..*)$"
    assert the(other, "TopicPermission", "itsm-incident")["spec"]["permissions"]["exchange"] == "x-y.events"


# ------------------------------------------------------------------------------------------ the runner


def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ITSM_AMQP_PASSWORD"):
            monkeypatch.delenv(key)


def test_the_runner_gives_each_service_its_own_user_and_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean(monkeypatch)
    monkeypatch.setenv("ITSM_AMQP_PASSWORD_PROBLEM", "given-by-the-operator")
    settings = stack.StackSettings.isolated(tmp_path, services=())
    runner = stack.Stack(settings)
    prefix = settings.broker_user_prefix
    assert prefix and prefix == settings.queue_prefix
    for name in services.names():
        env = runner.service_env(name)
        assert env["ITSM_BROKER_USER_PREFIX"] == prefix
        assert not [k for k in env if k.startswith("ITSM_AMQP_PASSWORD_") and k != "ITSM_AMQP_PASSWORD_FILE"]
        if name == "problem":
            assert env["ITSM_AMQP_URL"].startswith(f"amqp://{prefix}problem:given-by-the-operator@")
            assert "ITSM_AMQP_PASSWORD_FILE" not in env
            continue
        assert env["ITSM_AMQP_URL"].startswith(f"amqp://{prefix}{name}@"), "its own user, the password in a file"
        path = Path(env["ITSM_AMQP_PASSWORD_FILE"])
        assert path == tmp_path / f"amqp-password-{name}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text().strip()) >= 32
    passwords = {runner.service_env(n).get("ITSM_AMQP_PASSWORD_FILE") for n in services.names() if n != "problem"}
    assert len({Path(p).read_text() for p in passwords if p}) == len(services.names()) - 1, "one password each"
    assert runner.service_env("auth")["ITSM_AMQP_PASSWORD_FILE"] == str(tmp_path / "amqp-password-auth"), "kept"


@pytest.mark.parametrize("given_by", ["the shell", "the harness"])
def test_with_a_cluster_the_runner_gives_each_service_every_node_as_its_own_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given_by: str
) -> None:
    _clean(monkeypatch)
    nodes = "amqp://guest:guest@10.1.0.1:5672/, amqp://guest:guest@10.1.0.2:5673/,amqp://guest:guest@10.1.0.3/"
    extra = {}
    if given_by == "the shell":
        monkeypatch.setenv("ITSM_AMQP_URLS", nodes)  # make run: the operator's, as the broker's admin
    else:
        monkeypatch.delenv("ITSM_AMQP_URLS", raising=False)
        extra = {"ITSM_AMQP_URLS": nodes}  # a test's stack on a cluster of its own
    settings = stack.StackSettings.isolated(
        tmp_path, services=(), amqp_url="amqp://guest:guest@10.1.0.1/", extra_env=extra
    )
    runner = stack.Stack(settings)
    for name in services.names():
        env = runner.service_env(name)
        user = f"{settings.broker_user_prefix}{name}"
        urls = [f"amqp://{user}@10.1.0.1:5672/", f"amqp://{user}@10.1.0.2:5673/", f"amqp://{user}@10.1.0.3/"]
        assert env["ITSM_AMQP_URLS"] == ",".join(urls), "every node, as its own user, no password in the URLs"
        assert env["ITSM_AMQP_URL"] == urls[0]
        assert not [k for k, v in env.items() if "guest:guest" in v], "the admin's URLs reach no service"
        read = ServiceSettings(
            amqp_url=env["ITSM_AMQP_URL"],
            amqp_urls=env["ITSM_AMQP_URLS"],
            amqp_password_file=Path(env["ITSM_AMQP_PASSWORD_FILE"]),
        )
        password = Path(env["ITSM_AMQP_PASSWORD_FILE"]).read_text().strip()
        assert read.broker_urls() == [u.replace(f"{user}@", f"{user}:{password}@") for u in urls]
    assert "ITSM_AMQP_URLS" not in runner.service_env("incident", {"ITSM_AMQP_URLS": ""})


def _broker_available(settings: stack.StackSettings) -> bool:
    return probe_rabbitmq(settings.amqp_url) is None


async def _logs_in(url: str) -> bool:
    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception:
        return False
    await connection.close()
    return True


def test_the_runner_creates_the_users_on_the_broker_and_drops_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean(monkeypatch)
    settings = stack.StackSettings.isolated(tmp_path, services=("incident", "audit"))
    if not _broker_available(settings):
        pytest.skip("no local RabbitMQ")
    runner = stack.Stack(settings)
    try:
        runner.create_broker_users()
    except StackError as exc:
        pytest.skip(f"rabbitmqctl cannot create users here: {exc}")
    try:
        incident = runner.service_env("incident")
        url = incident["ITSM_AMQP_URL"].replace(
            "@", f":{Path(incident['ITSM_AMQP_PASSWORD_FILE']).read_text().strip()}@"
        )
        assert asyncio.run(_logs_in(url))
        wrong = url.replace(f"{settings.broker_user_prefix}incident:", f"{settings.broker_user_prefix}audit:")
        assert not asyncio.run(_logs_in(wrong)), "another service's user does not take this password"
    finally:
        runner.drop_broker_users()
    assert not asyncio.run(_logs_in(url))


def test_without_the_rights_the_runner_stops_and_says_what_to_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean(monkeypatch)
    settings = stack.StackSettings.isolated(tmp_path, services=("incident",))
    if not _broker_available(settings):
        pytest.skip("no local RabbitMQ")
    monkeypatch.setenv("ITSM_RABBITMQCTL", "false")  # rabbitmqctl that fails: no rights on the broker
    runner = stack.Stack(settings)
    with pytest.raises(StackError, match="import_definitions") as refused:
        runner.create_broker_users()
    path = tmp_path / "broker-users.json"
    assert str(path) in str(refused.value) and "ITSM_RABBITMQCTL" in str(refused.value)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert [u["name"] for u in document["users"]] == [f"{settings.broker_user_prefix}incident"]

    # Once someone with the rights has created them, the runner goes on without rights of its own.
    monkeypatch.delenv("ITSM_RABBITMQCTL")
    try:
        runner.create_broker_users()
    except StackError as exc:
        pytest.skip(f"rabbitmqctl cannot create users here: {exc}")
    try:
        monkeypatch.setenv("ITSM_RABBITMQCTL", "false")
        runner.create_broker_users()
    finally:
        monkeypatch.delenv("ITSM_RABBITMQCTL")
        broker_accounts.drop_users(runner.broker_topology(), ["incident"])
