"""Settings read from the environment: the broker nodes of a cluster and the password file filling each in."""

from __future__ import annotations

from pathlib import Path

import pytest
from itsm_shared.settings import ServiceSettings


def test_one_url_is_the_only_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITSM_AMQP_URL", "amqp://svc:pw@10.0.0.1:5672/")
    monkeypatch.delenv("ITSM_AMQP_URLS", raising=False)
    assert ServiceSettings().broker_urls() == ["amqp://svc:pw@10.0.0.1:5672/"]


def test_a_cluster_is_tried_in_the_order_given_and_its_first_node_is_the_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "amqp-password"
    secret.write_text("p@ss/word\n")
    monkeypatch.setenv("ITSM_AMQP_URL", "amqp://ignored@10.0.0.9:5672/")
    monkeypatch.setenv(
        "ITSM_AMQP_URLS", " amqp://svc@node-a:5672/ , amqp://svc@node-b:5673/,amqp://svc:own@node-c:5674/"
    )
    monkeypatch.setenv("ITSM_AMQP_PASSWORD_FILE", str(secret))
    settings = ServiceSettings()
    assert settings.broker_urls() == [
        "amqp://svc:p%40ss%2Fword@node-a:5672/",
        "amqp://svc:p%40ss%2Fword@node-b:5673/",
        "amqp://svc:own@node-c:5674/",  # a URL that carries its password keeps it
    ]
    assert settings.amqp_url == settings.broker_urls()[0]
