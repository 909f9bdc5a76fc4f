"""The audit service's deployment settings (issue #11, findings 15 and 11): the anchor key that signs its hash chain
reaches the audit process only (runner and compose), never a migration job or another service; the queues its
replay may publish to are the consumer queues of the table of services."""

from __future__ import annotations

import base64
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import service_table as services
import stack
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ANCHOR = ("ITSM_AUDIT_ANCHOR_KEY", "ITSM_AUDIT_ANCHOR_KEY_FILE")


def test_replay_queues_are_the_other_services_consumer_queues() -> None:
    queues = services.replay_queues()
    assert set(queues) == {q for s in services.table() if s.name != "audit" for q in s.queues}
    assert "problem.incidents" in queues and "incident.problem-resolved" in queues
    assert not [q for q in queues if q.startswith("audit.")], "never the log's own queue"


def test_only_the_audit_service_is_given_the_anchor_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("itsm_shared.provision")
    for variable in ANCHOR:
        monkeypatch.delenv(variable, raising=False)
    runner = stack.Stack(stack.StackSettings.isolated(tmp_path, services=()))
    env = runner.service_env("audit")
    path = Path(env["ITSM_AUDIT_ANCHOR_KEY_FILE"])
    assert path.parent == tmp_path and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.urlsafe_b64decode(path.read_text().strip())) == 32
    key = path.read_text()
    assert runner.service_env("audit")["ITSM_AUDIT_ANCHOR_KEY_FILE"] == str(path) and path.read_text() == key  # kept
    assert env["ITSM_AUDIT_REPLAY_QUEUES"].split(",") == list(services.replay_queues())
    monkeypatch.setenv("ITSM_AUDIT_ANCHOR_KEY", "from-the-operator")  # exported in the shell that runs `make run`
    assert runner.service_env("audit")["ITSM_AUDIT_ANCHOR_KEY"] == "from-the-operator"
    assert "ITSM_AUDIT_ANCHOR_KEY_FILE" not in runner.service_env("audit")
    for name in services.names():
        assert not set(ANCHOR) & set(migration_env(runner, name, monkeypatch)), f"migrate-{name}"
        if name != "audit":
            assert not set(ANCHOR) & set(runner.service_env(name)), name


def migration_env(runner: stack.Stack, name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment the runner starts `name`'s migration job with (the job itself not run)."""
    seen: dict[str, str] = {}

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        seen.update(kwargs["env"])
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(stack.subprocess, "run", run)
    runner.migrate(name)
    return seen


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_mounts_the_anchor_key_in_the_audit_container_only(compose: dict[str, Any]) -> None:
    assert compose["secrets"]["audit_anchor_key"] == {"environment": "ITSM_AUDIT_ANCHOR_KEY"}
    entries = compose["services"]
    audit = entries["audit"]
    assert "audit_anchor_key" in audit["secrets"]
    assert audit["environment"]["ITSM_AUDIT_ANCHOR_KEY_FILE"] == "/run/secrets/audit_anchor_key"
    assert audit["environment"]["ITSM_AUDIT_REPLAY_QUEUES"].split(",") == list(services.replay_queues())
    for name, entry in entries.items():
        if name != "audit":
            assert "audit_anchor_key" not in entry.get("secrets", []), name
            assert not set(ANCHOR) & set(entry.get("environment") or {}), name
