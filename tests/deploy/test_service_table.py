"""The table of services (deploy/services.toml) and what is made from it: the generated regions of the Traefik
dynamic configuration and of docker-compose.yml, and the service packages it must match."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import configs
import pytest
import service_table as services
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

SEVENTH = services.Service(name="report", port=8107, prefixes=("/api/v1/reports",), queues=("report.events",))


def test_the_table() -> None:
    table = services.table()
    assert services.names() == ("auth", "incident", "problem", "change", "audit", "webhook")
    assert services.get("incident").prefixes == ("/api/v1/incidents", "/api/v1/sla-policies")
    assert services.get("incident").docs_path == "/api/v1/incidents/docs"
    assert services.get("audit").upstream_env == "ITSM_AUDIT_UPSTREAM"
    assert services.get("audit").queues == ("audit.ingest",)
    assert services.get("webhook").queues == ("webhook.events",)
    assert [s.port for s in table] == [8101, 8102, 8103, 8104, 8105, 8106]
    assert services.ISSUER in services.names()
    with pytest.raises(KeyError, match="no service 'nope'"):
        services.get("nope")


def test_every_service_package_has_an_entry_and_every_entry_a_package() -> None:
    packages = {path.parent.name for path in (REPO_ROOT / "services").glob("*/pyproject.toml")}
    assert packages == set(services.names()), "add the service to deploy/services.toml (or its package)"


def test_committed_traefik_and_compose_files_are_what_the_table_makes() -> None:
    stale = configs.outdated()
    assert not stale, f"out of date, run `make config`: {[str(p.relative_to(REPO_ROOT)) for p in stale]}"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "deploy" / "configs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_new_service_is_one_entry() -> None:
    table = (*services.table(), SEVENTH)

    compose = yaml.safe_load(configs.render_compose(table))
    entries = compose["services"]
    assert entries["report"]["image"] == "itsm-report"
    assert entries["report"]["expose"] == ["8107"]
    assert entries["report"]["environment"]["PORT"] == "8107"
    assert entries["report"]["depends_on"]["auth"]["condition"] == "service_healthy"
    assert entries["migrate-report"]["command"] == ["python", "-m", "itsm_shared.migrate", "report"]
    assert entries["traefik"]["environment"]["ITSM_REPORT_UPSTREAM"] == "http://report:8107"
    assert "report" in entries["traefik"]["depends_on"]
    # Its database password and its broker password: a secret of its own each; its broker user in the definitions.
    assert compose["secrets"]["report_db_password"] == {"environment": "ITSM_DB_APP_PASSWORD_REPORT"}
    assert compose["secrets"]["report_amqp_password"] == {"environment": "ITSM_AMQP_PASSWORD_REPORT"}
    definitions = json.loads(compose["configs"]["rabbitmq_definitions"]["content"].replace("$$", "$"))
    assert "report" in [user["name"] for user in definitions["users"]]
    # Everything else stays as it was.
    before = yaml.safe_load(configs.render_compose())
    # The audit service may replay into its consumer queue (ITSM_AUDIT_REPLAY_QUEUES, from the table).
    replay = entries["audit"]["environment"]["ITSM_AUDIT_REPLAY_QUEUES"]
    assert replay == before["services"]["audit"]["environment"]["ITSM_AUDIT_REPLAY_QUEUES"] + ",report.events"
    entries["audit"]["environment"]["ITSM_AUDIT_REPLAY_QUEUES"] = replay.removesuffix(",report.events")
    del entries["report"], entries["migrate-report"]
    del entries["traefik"]["environment"]["ITSM_REPORT_UPSTREAM"], entries["traefik"]["depends_on"]["report"]
    del compose["secrets"]["report_db_password"], compose["secrets"]["report_amqp_password"]
    del compose["configs"]["rabbitmq_definitions"], before["configs"]["rabbitmq_definitions"]
    assert compose == before

    dynamic = configs.render_dynamic(table)
    assert '{{- $services := list "auth" "incident" "problem" "change" "audit" "webhook" "report" }}' in dynamic
    assert '      "report" (list "/api/v1/reports") }}' in dynamic


def test_the_generated_regions_are_found_or_the_generator_says_why(tmp_path: Path) -> None:
    template = tmp_path / "dynamic.yml"
    template.write_text("a\n# BEGIN generated: services\nold\n")
    with pytest.raises(configs.ConfigError, match="no END line"):
        configs.render_dynamic(services.table(), template)
    template.write_text("nothing generated here\n")
    with pytest.raises(configs.ConfigError, match="no BEGIN line"):
        configs.render_dynamic(services.table(), template)
    text = "a\n  # BEGIN generated: x\n  old\n  # END generated: x\nb\n"
    assert configs.replace_regions(text, {"x": "  new\n"}, path=template) == (
        "a\n  # BEGIN generated: x\n  new\n  # END generated: x\nb\n"
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('name = "Auth"\nport = 8101\nprefixes = ["/api/v1/auth"]', "lowercase"),
        ('name = "auth"\nport = 80\nprefixes = ["/api/v1/auth"]', "port"),
        ('name = "auth"\nport = 8101\nprefixes = ["/auth"]', "prefixes"),
        ('name = "auth"\nport = 8101\nprefixes = ["/api/v1/auth"]\nqueues = ["incident.x"]', "auth.<purpose>"),
        ('name = "auth"\nport = 8101\nprefixes = ["/api/v1/auth"]\nroutes = []', "unknown keys"),
        ('name = "auth"\nprefixes = ["/api/v1/auth"]', "missing 'port'"),
        ('name = "incident"\nport = 8102\nprefixes = ["/api/v1/incidents"]', "no entry for 'auth'"),
    ],
)
def test_mistakes_in_the_table_are_refused(entry: str, message: str) -> None:
    with pytest.raises(services.TableError, match=message):
        services.parse(f"[[service]]\n{entry}\n")


def test_duplicates_are_refused() -> None:
    auth = services.get("auth")
    text = "".join(
        f'[[service]]\nname = "{s.name}"\nport = {s.port}\nprefixes = {list(s.prefixes)!r}\n'.replace("'", '"')
        for s in (auth, replace(auth, name="other"))
    )
    with pytest.raises(services.TableError, match="port given twice: 8101"):
        services.parse(text)


def test_the_makefile_reads_the_table_with_plain_python() -> None:
    def run(*args: str) -> str:
        result = subprocess.run(
            ["python3", str(REPO_ROOT / "deploy" / "service_table.py"), *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    assert run("names").split() == list(services.names())
    assert run("ports").splitlines() == [f"{s.name} {s.port}" for s in services.table()]
