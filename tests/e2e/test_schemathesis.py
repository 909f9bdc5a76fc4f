"""Each service's OpenAPI document against what the service really answers, through the gateway: schemathesis with
every check (`st run --checks all`), 25 examples per operation, in its examples, coverage and fuzzing phases
(stateful testing through links is not part of it), one test per service. The run is schemathesis' engine, the
CLI's: its pytest integration (`from_fixture`) does not run on pytest 9.2.

It runs on a stack of its own: it creates records with arbitrary values by the hundred (webhook subscriptions
included), which the other e2e tests should not see. The stack's gateway has the harness's lifted rate limits, so
the 429 every operation documents (the gateway's limit) is not what is tested here (test_gateway_limits.py is).

The caller is a user with every role that writes (admin, agent, problem, change and CAB manager), made by the
bootstrap admin, so that the role-gated operations are tested past their 403.

A schema-valid request may still be refused with 422 for a rule no JSON Schema can state (a field compared with
another, a reference to a record that does not exist, a cursor the server did not issue, an Idempotency-Key reused
with another body). Each such rule is in the operation's document, under its 422 response's `x-rules`, by where the
value is (`body.parent_id`); such a refusal is accepted when every value its problem names is one of those. Any
other refusal of valid data, and any other failure, fails the test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import service_table as services
import stack as stack_module
from schemathesis.engine import events
from schemathesis.openapi.checks import RejectedPositiveData

from .conftest import isolated_stack

EXAMPLES = 25
# One operation at a time: schemathesis' workers are threads, and CPython 3.11 fails building regexes' ASTs in
# several threads at once (SystemError: AST constructor recursion depth mismatch).
WORKERS = 1
# schemathesis' answers that reject invalid data, to which the gateway's 413 is added.
NEGATIVE_REJECTED = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"]
# Roles that write somewhere: the requester's, auditor's and integrator's narrower views are tested elsewhere.
ROLES = ["admin", "agent", "problem_manager", "change_manager", "cab_member"]
OPERATOR = "schemathesis"


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack_module.Stack]:
    with isolated_stack(tmp_path_factory.mktemp("schemathesis-run")) as running:
        yield running


def _token(client: httpx.Client, username: str, password: str) -> str:
    form = {"grant_type": "password", "username": username, "password": password}
    response = client.post("/api/v1/auth/token", data=form)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture(scope="module")
def operator_token(api_stack: stack_module.Stack) -> str:
    password = api_stack.settings.bootstrap_admin_password
    assert password
    with httpx.Client(base_url=api_stack.settings.gateway_url, timeout=30) as client:
        admin = {"Authorization": f"Bearer {_token(client, 'admin', password)}"}
        operator_password = f"{password}-operator"
        user = {"username": OPERATOR, "password": operator_password, "roles": ROLES}
        created = client.post("/api/v1/auth/users", json=user, headers=admin)
        assert created.status_code == 201, created.text
        return _token(client, OPERATOR, operator_password)


def documented_rules(operation: Any) -> set[str]:
    """Where the values are that the operation's 422 `x-rules` name (`body.parent_id`, `query.cursor`)."""
    invalid = operation.definition.raw.get("responses", {}).get("422", {})
    return set(invalid.get("x-rules", {}))


def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """False (not a failure) for a 422 of valid data that names only values the operation's rules cover."""
    if not isinstance(failure, RejectedPositiveData) or response.status_code != 422:
        return True
    try:
        problem = response.json()
    except ValueError:
        return True
    refused = {".".join(str(part) for part in error["loc"][:2]) for error in problem.get("errors") or []}
    return not refused or not refused <= documented_rules(case.operation)


def failures(schema: Any) -> list[str]:
    """Runs every phase but the stateful one, as `st run` does, and returns what it found, one line per failure
    (its operation, check code and title, the response's status and the start of its body) and per error."""
    found: dict[str, None] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for case_id, checks in event.recorder.checks.items():
                response = event.recorder.find_response(case_id=case_id)
                answer = f"{response.status_code} {response.text[:300]!r}" if response is not None else "no response"
                for check in checks:
                    if (info := check.failure_info) is not None:
                        failure = info.failure
                        detail = " ".join(failure.message.split())[:300]
                        found[f"{failure.operation}: {failure.code} {failure.title} ({detail}); answered {answer}"] = (
                            None
                        )
        elif isinstance(event, events.NonFatalError):
            found[f"{event.label}: error {event.value!r}"] = None
        elif isinstance(event, events.FatalError):
            found[f"fatal: {event.exception!r}"] = None
    return list(found)


@pytest.mark.parametrize("service", services.names())
def test_openapi_document_describes_every_answer(
    service: str, api_stack: stack_module.Stack, operator_token: str
) -> None:
    gateway = api_stack.settings.gateway_url
    config = schemathesis.Config.from_dict(
        {
            "base-url": gateway,
            "headers": {"Authorization": f"Bearer {operator_token}"},
            "generation": {"max-examples": EXAMPLES},
            # Every check: schemathesis' default, as `--checks all` in its CLI.
            "phases": {"stateful": {"enabled": False}},
            # A body too large for the gateway (1 MiB) is refused by it with 413 before the service sees it.
            "checks": {"negative_data_rejection": {"expected-statuses": [*NEGATIVE_REJECTED, "413"]}},
            "request-timeout": 30,
            "workers": WORKERS,
            # Nothing remembered from run to run (nor written into the work tree).
            "cache": {"enabled": False},
        }
    )
    schema = schemathesis.openapi.from_url(f"{gateway}{services.get(service).api_prefix}/openapi.json", config=config)
    schema.hook(filter_failure)
    found = failures(schema)
    assert not found, f"{len(found)} distinct failures:\n" + "\n".join(found)
