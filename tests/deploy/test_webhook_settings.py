"""The runner (`make run`, the test harness) and the webhook service's settings: its key of the signing secrets
reaches the webhook process only, and ITSM_WEBHOOK_* settings of the operator's shell pass through to it."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
import service_table as services
import stack


def test_only_the_webhook_service_is_given_its_key(
    monkeypatch: pytest.MonkeyPatch, generated_key_file: Callable[[str, str], tuple[stack.Stack, Path]]
) -> None:
    runner, path = generated_key_file("webhook", "ITSM_WEBHOOK_SECRET_KEY")
    key = path.read_text()
    assert len(base64.urlsafe_b64decode(key.strip())) == 32
    assert runner.service_env("webhook")["ITSM_WEBHOOK_SECRET_KEY_FILE"] == str(path) and path.read_text() == key
    monkeypatch.setenv("ITSM_WEBHOOK_SECRET_KEY", "from-the-operator")
    assert runner.service_env("webhook")["ITSM_WEBHOOK_SECRET_KEY"] == "from-the-operator"
    assert "ITSM_WEBHOOK_SECRET_KEY_FILE" not in runner.service_env("webhook")
    for name in services.names():
        if name != "webhook":
            assert not {"ITSM_WEBHOOK_SECRET_KEY", "ITSM_WEBHOOK_SECRET_KEY_FILE"} & set(runner.service_env(name))


def test_the_development_setting_passes_through_from_the_shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("itsm_shared.provision")
    monkeypatch.setenv(
        "ITSM_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true"
    )  # `ITSM_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true make run`
    monkeypatch.setenv("ITSM_WEBHOOK_RETRY_SCHEDULE", "0,1,2")
    runner = stack.Stack(stack.StackSettings.from_env(run_dir=tmp_path, services=()))
    env = runner.service_env("webhook")
    assert env["ITSM_WEBHOOK_ALLOW_PRIVATE_NETWORKS"] == "true" and env["ITSM_WEBHOOK_RETRY_SCHEDULE"] == "0,1,2"
