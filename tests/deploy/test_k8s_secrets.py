"""Secrets and credentials in the Kubernetes charts: no secret is written into a manifest, each service reads
its own credentials from Secrets, and deploy/k8s/dev-secrets.sh creates every Secret the charts read."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest
import service_table as services
import yaml
from k8s_charts import APP, DATA, K8S, Doc, env_of, full, of_kind, pod_specs, render, the, variants


def test_no_secret_is_written_into_a_manifest() -> None:
    credential = re.compile(r"PASSWORD|SECRET|TOKEN|USER$|_KEY$|KEK$|KEK_PREVIOUS$")
    url_with_userinfo = re.compile(r"^[a-z]+://([^@/]*)@")
    for variant, docs in variants():
        assert not of_kind(docs, "Secret"), f"{variant}: Secrets are created outside the charts"
        assert not of_kind(docs, "ConfigMap"), f"{variant}: nothing is configured through ConfigMaps"
        for workload, spec in pod_specs(docs).items():
            for container in spec["containers"]:
                assert "envFrom" not in container, f"{variant}: {workload}"
                for name, entry in env_of(container).items():
                    where = f"{variant}: {workload}: {name}"
                    if credential.search(name) and not name.endswith("_FILE"):  # a file's path is no secret
                        assert set(entry) == {"name", "valueFrom"}, where
                        assert set(entry["valueFrom"]) == {"secretKeyRef"}, where
                    userinfo = url_with_userinfo.match(str(entry.get("value", "")))
                    if userinfo:
                        # Only references to variables read from Secrets, expanded by the kubelet.
                        refs = re.fullmatch(r"\$\(([A-Z_]+)\):\$\(([A-Z_]+)\)", userinfo.group(1))
                        assert refs, where
                        for ref in refs.groups():
                            env = env_of(container)
                            assert "secretKeyRef" in env[ref]["valueFrom"], where
                            assert list(env).index(ref) < list(env).index(name), f"{where}: {ref} must come first"
                for arg in container.get("args", []) + container.get("command", []):
                    assert not re.search(r"pass(word)?=|://[^$/]*@", arg, re.I), f"{where}: {arg}"


def test_each_service_reads_its_own_credentials(app_chart: list[Doc]) -> None:
    for name in services.names():
        (container,) = the(app_chart, "Deployment", full(name))["spec"]["template"]["spec"]["containers"]
        env = env_of(container)
        refs = {k: v["valueFrom"]["secretKeyRef"] for k, v in env.items() if "valueFrom" in v}
        assert refs["DB_USER"] == {"name": f"{full(name)}-db", "key": "username"}
        assert refs["DB_PASSWORD"] == {"name": f"{full(name)}-db", "key": "password"}
        assert refs["AMQP_USER"] == {"name": f"{full(name)}-amqp", "key": "username"}
        assert refs["AMQP_PASSWORD"] == {"name": f"{full(name)}-amqp", "key": "password"}
        assert env["ITSM_DATABASE_URL"]["value"] == "postgresql://$(DB_USER):$(DB_PASSWORD)@itsm-postgres-rw:5432/itsm"
        assert env["ITSM_AMQP_URL"]["value"] == "amqp://$(AMQP_USER):$(AMQP_PASSWORD)@itsm-rabbitmq:5672/"
        issuer = services.get(services.ISSUER)
        assert env["ITSM_JWKS_URL"]["value"] == f"http://{full(issuer.name)}:{issuer.port}{services.JWKS_PATH}"
        volumes = {
            v["name"]: v for v in the(app_chart, "Deployment", full(name))["spec"]["template"]["spec"]["volumes"]
        }
        if name == services.ISSUER:
            assert refs["ITSM_BOOTSTRAP_ADMIN_PASSWORD"]["optional"] is True
            # The key-encryption key of its signing keys: a file from a Secret, for the issuer only.
            assert volumes["kek"]["secret"]["secretName"] == "itsm-auth-kek"
            mount = next(m for m in container["volumeMounts"] if m["name"] == "kek")
            assert mount["readOnly"] is True
            assert env["ITSM_AUTH_KEK_FILE"]["value"] == f"{mount['mountPath']}/kek"
            assert refs["ITSM_AUTH_KEK_PREVIOUS"] == {"name": "itsm-auth-kek", "key": "previous", "optional": True}
        else:
            assert not {"ITSM_BOOTSTRAP_ADMIN_PASSWORD", "ITSM_AUTH_KEK_FILE", "ITSM_AUTH_KEK_PREVIOUS"} & set(env)
            assert set(volumes) == {"tmp", *{"audit": ["anchor-key"], "webhook": ["webhook-key"]}.get(name, [])}
        if name == "audit":
            # The key that signs the log's hash chain: a file from a Secret, for the audit service only.
            assert volumes["anchor-key"]["secret"]["secretName"] == "itsm-audit-anchor-key"
            mount = next(m for m in container["volumeMounts"] if m["name"] == "anchor-key")
            assert mount["readOnly"] is True
            assert env["ITSM_AUDIT_ANCHOR_KEY_FILE"]["value"] == f"{mount['mountPath']}/key"
            assert env["ITSM_AUDIT_REPLAY_QUEUES"]["value"].split(",") == list(services.replay_queues())
        else:
            assert not {"ITSM_AUDIT_ANCHOR_KEY_FILE", "ITSM_AUDIT_REPLAY_QUEUES"} & set(env)

        if name == "webhook":
            # The key of the subscriptions' signing secrets: a file from a Secret, for the webhook service only.
            assert volumes["webhook-key"]["secret"]["secretName"] == "itsm-webhook-secret-key"
            mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-key")
            assert mount["readOnly"] is True
            assert env["ITSM_WEBHOOK_SECRET_KEY_FILE"]["value"] == f"{mount['mountPath']}/key"
        else:
            assert "ITSM_WEBHOOK_SECRET_KEY_FILE" not in env


def _secret_references(docs: list[Doc]) -> dict[str, set[str]]:
    """Every Secret the objects need, with the keys they read from it (optional keys left out)."""
    refs: dict[str, set[str]] = {}
    for spec in pod_specs(docs).values():
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                keys = {item["key"] for item in volume["secret"]["items"]}
                refs.setdefault(volume["secret"]["secretName"], set()).update(keys)
        for container in spec["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    refs.setdefault(ref["name"], set()).add(ref["key"])
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "Cluster":
            refs.setdefault(spec["superuserSecret"]["name"], set()).update({"username", "password"})
            for role in spec["managed"]["roles"]:
                refs.setdefault(role["passwordSecret"]["name"], set()).update({"username", "password"})
        elif doc["kind"] == "User":
            refs.setdefault(spec["importCredentialsSecret"]["name"], set()).update({"username", "password"})
        elif doc["kind"] == "Middleware" and "redis" in spec.get("rateLimit", {}):
            refs.setdefault(spec["rateLimit"]["redis"]["secret"], set()).update({"username", "password"})
    return refs


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> tuple[Path, Path]:
    """A kubectl that knows the Secrets listed in `existing` and appends what it is asked to create to `created`."""
    existing, created = tmp_path / "existing", tmp_path / "created"
    existing.write_text("")
    script = tmp_path / "kubectl"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'case "$3 $4" in\n'
        f'  "get secret") grep -qx "$5" {existing} ;;\n'
        f'  "create -f") {{ cat; echo "---"; }} >> {created} ;;\n'
        '  *) echo "unexpected: $*" >&2; exit 2 ;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    return script, existing


def test_dev_secrets_script_creates_every_secret_the_charts_read(
    fake_kubectl: tuple[Path, Path], tmp_path: Path
) -> None:
    script, existing = fake_kubectl
    env = {**os.environ, "KUBECTL": str(script)}
    run = subprocess.run(["bash", str(K8S / "dev-secrets.sh"), "itsm"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    created = [d for d in yaml.safe_load_all((tmp_path / "created").read_text()) if d]
    secrets = {d["metadata"]["name"]: d for d in created}
    assert len(secrets) == len(created)
    references = _secret_references(render(APP)) | _secret_references(render(DATA))
    for name, keys in references.items():
        assert name in secrets, f"dev-secrets.sh does not create {name}"
        assert keys <= set(secrets[name]["stringData"]), name
    for name in services.names():
        db = secrets[f"{full(name)}-db"]
        assert db["type"] == "kubernetes.io/basic-auth", "CloudNativePG reads role passwords from basic-auth Secrets"
        assert db["stringData"]["username"] == f"{name}_app", "CloudNativePG's role name"
    kek = base64.urlsafe_b64decode(secrets["itsm-auth-kek"]["stringData"]["kek"])
    assert len(kek) == 32, "auth's key-encryption key: 32 bytes in URL-safe base64"
    passwords = [d["stringData"]["password"] for d in created if "password" in d["stringData"]]
    assert len(set(passwords)) == len(passwords) and all(re.fullmatch(r"[0-9a-f]{48}", p) for p in passwords)
    assert all(d["metadata"]["namespace"] == "itsm" for d in created)
    assert not any(p in run.stdout + run.stderr for p in passwords), "no password is printed"

    # Run again: everything exists, nothing is created or replaced.
    existing.write_text("".join(f"{name}\n" for name in secrets))
    (tmp_path / "created").write_text("")
    again = subprocess.run(["bash", str(K8S / "dev-secrets.sh"), "itsm"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "created").read_text() == ""
