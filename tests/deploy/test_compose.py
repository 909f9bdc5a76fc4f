"""docker-compose.yml checked offline (no Docker engine here): valid against the Compose
Specification, made from the table of services (deploy/services.toml) and describing the same stack as
the local runner (deploy/stack.py, deploy/run.py).

The Compose Specification JSON schema comes from the check-jsonschema package (a dev dependency),
which ships it among its vendored SchemaStore schemas; tests download nothing.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import configs
import gateway
import jsonschema
import pytest
import service_table as services
import stack
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def traefik_static() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(gateway.TRAEFIK_STATIC.read_text())
    return loaded


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    errors = sorted(validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_catches_mistakes(compose: dict[str, Any]) -> None:
    # The validation above is not vacuous: a misspelt key and a bad depends_on condition fail.
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["auth"]["helthcheck"] = {}
    broken["services"]["incident"]["depends_on"]["auth"]["condition"] = "service_ready"
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))
    text = [f"{list(e.absolute_path)} {e.message}" for e in errors]
    assert any("helthcheck" in t for t in text), text
    assert any("service_ready" in t for t in text), text
    assert not list(jsonschema.validators.validator_for(schema)(schema).iter_errors(compose))


def test_every_service_of_the_table_is_in_compose_with_its_migration_job(compose: dict[str, Any]) -> None:
    entries = compose["services"]
    apps = {name for name in entries if f"migrate-{name}" in entries}
    assert apps == set(services.names()), "compose runs exactly the services of the table"
    for name in services.names():
        app, job = entries[name], entries[f"migrate-{name}"]
        for entry in (app, job):
            assert entry["build"]["context"] == "."
            assert entry["build"]["dockerfile"] == "deploy/Dockerfile"
            assert entry["build"]["args"]["SERVICE"] == name
            assert entry["image"] == f"itsm-{name}"
        assert job["command"] == ["python", "-m", "itsm_shared.migrate", name]
        assert job["restart"] == "no"
        assert app["depends_on"][f"migrate-{name}"]["condition"] == "service_completed_successfully"
        assert job["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert app["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        if name != "auth":  # the others need auth's JWKS
            assert app["depends_on"]["auth"]["condition"] == "service_healthy"


def test_services_listen_on_the_table_ports_with_readyz_healthchecks(compose: dict[str, Any]) -> None:
    for service in services.table():
        app = compose["services"][service.name]
        port = service.port
        assert env_of(app)["PORT"] == str(port)
        assert app["expose"] == [str(port)]
        assert "ports" not in app, "services are reached through the gateway only"
        check = " ".join(app["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in check


def test_service_environment_names_match_the_runner(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in list(os.environ):
        if key.startswith("ITSM_"):
            monkeypatch.delenv(key)
    settings = stack.StackSettings(services=(), run_dir=tmp_path, bootstrap_admin_password="x" * 12)
    runner = stack.Stack(settings)
    for name in services.names():
        by_runner = {k for k in runner.service_env(name) if k.startswith("ITSM_")}
        in_compose = {k for k in env_of(compose["services"][name]) if k.startswith("ITSM_")}
        assert in_compose == by_runner, name
        url = env_of(compose["services"][name])["ITSM_DATABASE_URL"]
        assert url.startswith(f"postgresql://{name}_app@"), "the app role, as itsm_shared.provision.app_url"
        assert env_of(compose["services"][name])["ITSM_JWKS_URL"] == (
            f"http://{services.ISSUER}:{services.get(services.ISSUER).port}{services.JWKS_PATH}"
        )
        job_env = env_of(compose["services"][f"migrate-{name}"])
        assert job_env["ITSM_DATABASE_URL"].startswith("postgresql://postgres:"), "the job needs the superuser"
        assert f"ITSM_DB_APP_PASSWORD_{name.upper()}_FILE" in job_env, "its own role's password (test_db_credentials)"


def test_gateway_uses_the_same_traefik_files_and_environment(
    compose: dict[str, Any], traefik_static: dict[str, Any]
) -> None:
    traefik = compose["services"]["traefik"]
    assert traefik["image"].startswith("traefik:v3.7")
    assert traefik["command"] == ["--configFile=/etc/traefik/traefik.yml"]
    assert "./deploy/traefik:/etc/traefik:ro" in traefik["volumes"]
    # The mounted static file points at the mounted dynamic file, and its entrypoint is the
    # container port that compose publishes as ITSM_GATEWAY_PORT.
    assert traefik_static["providers"]["file"]["filename"] == "/etc/traefik/dynamic.yml"
    container_port = traefik_static["entryPoints"]["web"]["address"].rsplit(":", 1)[1]
    assert traefik["ports"] == [f"${{ITSM_GATEWAY_PORT:-{gateway.DEFAULT_GATEWAY_PORT}}}:{container_port}"]
    # Same variables as the runner gives its Traefik process.
    upstreams = {s.name: f"http://{s.name}:{s.port}" for s in services.table()}
    by_runner = gateway.gateway_env(upstreams, api_rate_limit=50, login_rate_limit=10, base={})
    env = env_of(traefik)
    assert set(env) == set(by_runner)
    for service in services.table():
        assert env[service.upstream_env] == upstreams[service.name]
    assert env["ITSM_API_RATE_LIMIT"] == f"${{ITSM_API_RATE_LIMIT:-{gateway.DEFAULT_API_RATE_LIMIT}}}"
    assert env["ITSM_LOGIN_RATE_LIMIT"] == f"${{ITSM_LOGIN_RATE_LIMIT:-{gateway.DEFAULT_LOGIN_RATE_LIMIT}}}"
    assert set(traefik["depends_on"]) == set(services.names())


def test_dynamic_config_reads_every_variable_compose_and_runner_set() -> None:
    template = configs.TRAEFIK_DYNAMIC.read_text()
    read = set(re.findall(r'env "([A-Z_]+)"', template))
    assert {"ITSM_API_RATE_LIMIT", "ITSM_LOGIN_RATE_LIMIT", "ITSM_API_MAX_INFLIGHT"} <= read
    # Upstream names are built in the template: ITSM_<SERVICE>_UPSTREAM over the service list.
    assert 'printf "ITSM_%s_UPSTREAM" (upper $name)' in template
    listed = re.search(r"\$services := list (.+)", template)
    assert listed is not None
    assert tuple(re.findall(r'"(\w+)"', listed.group(1))) == services.names()


def test_infrastructure_images_and_mounted_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert services["rabbitmq"]["image"] == "rabbitmq:4-management"
    for entry in services.values():
        for volume in entry.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), source


def test_dockerfile_builds_one_workspace_member() -> None:
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    assert "ARG SERVICE" in dockerfile
    assert 'uv sync --frozen --no-dev --package "itsm-${SERVICE}"' in dockerfile
    assert "exec uvicorn" in dockerfile
    assert "${ITSM_SERVICE}.main:app" in dockerfile
    # Every service's workspace package follows the itsm-<name> naming the Dockerfile relies on.
    for name in stack.discover_services():
        pyproject = (REPO_ROOT / "services" / name / "pyproject.toml").read_text()
        assert f'name = "itsm-{name}"' in pyproject
