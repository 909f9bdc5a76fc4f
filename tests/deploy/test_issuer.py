"""The token issuer (ITSM_JWT_ISSUER) is the gateway's public URL in every deployment, the same for every service
(each verifies `iss`), so that RFC 8414 finds the authorization server metadata at
<issuer>/.well-known/oauth-authorization-server, the route the table gives auth (README, Auth)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import service_table as services
import stack
import yaml
from k8s_charts import APP, of_kind, render
from test_compose import env_of

REPO_ROOT = Path(__file__).resolve().parents[2]
WELL_KNOWN = "/.well-known/oauth-authorization-server"


def test_the_gateway_routes_the_metadata_to_auth() -> None:
    assert WELL_KNOWN in services.get(services.ISSUER).prefixes
    assert services.get(services.ISSUER).api_prefix == "/api/v1/auth"


def test_a_well_known_uri_is_never_a_service_api_prefix() -> None:
    with pytest.raises(services.TableError, match="first"):
        services.parse(f'[[service]]\nname = "auth"\nport = 8101\nprefixes = ["{WELL_KNOWN}", "/api/v1/auth"]\n')
    with pytest.raises(services.TableError, match="well-known"):
        services.parse('[[service]]\nname = "auth"\nport = 8101\nprefixes = ["/api/v1/auth", "/.well-known/A"]\n')


def test_the_runner_gives_every_service_the_gateway_url_as_issuer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ITSM_JWT_ISSUER", raising=False)
    settings = stack.StackSettings(services=(), run_dir=tmp_path, gateway_port=8123)
    runner = stack.Stack(settings)
    assert {runner.service_env(name)["ITSM_JWT_ISSUER"] for name in services.names()} == {"http://127.0.0.1:8123"}
    monkeypatch.setenv("ITSM_JWT_ISSUER", "https://itsm.example.com")  # the operator's own
    assert {runner.service_env(name)["ITSM_JWT_ISSUER"] for name in services.names()} == {"https://itsm.example.com"}


def test_compose_gives_every_service_one_issuer() -> None:
    compose: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    issuers = {env_of(compose["services"][name])["ITSM_JWT_ISSUER"] for name in services.names()}
    assert issuers == {"${ITSM_JWT_ISSUER:-http://127.0.0.1:8000}"}


def issuers_in(values: dict[str, Any]) -> set[str | None]:
    found: set[str | None] = set()
    for name, deployment in of_kind(render(APP, values), "Deployment").items():
        if name.removeprefix("itsm-") not in services.names():
            continue
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        found.add(env.get("ITSM_JWT_ISSUER"))
    return found


@pytest.mark.parametrize(
    ("gateway", "issuer"),
    [
        ({}, None),  # neither: the services' default
        ({"host": "itsm.example.com"}, "http://itsm.example.com"),
        ({"host": "itsm.example.com", "tls": {"secretName": "itsm-tls"}}, "https://itsm.example.com"),
        ({"host": "itsm.internal", "publicUrl": "https://itsm.example.com/"}, "https://itsm.example.com"),
    ],
)
def test_helm_derives_one_issuer_for_every_service(gateway: dict[str, Any], issuer: str | None) -> None:
    assert issuers_in({"gateway": gateway}) == {issuer}
