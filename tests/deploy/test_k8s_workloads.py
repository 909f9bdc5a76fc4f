"""Invariants of the workloads the itsm chart runs: probes, autoscaling and disruption budgets, a locked-down
pod everywhere, images pinned to a version, and the migrations as Helm hooks that run before a version serves."""

from __future__ import annotations

import re

import helm_python as helm
import pytest
import service_table as services
from k8s_charts import APP, APP_VERSION, Doc, env_of, full, pod_specs, render, the, variants


def test_services_have_probes_resources_and_autoscaling(app_chart: list[Doc]) -> None:
    for name in services.names():
        deployment = the(app_chart, "Deployment", full(name))
        assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert "initContainers" not in spec
        hpa = the(app_chart, "HorizontalPodAutoscaler", full(name))["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": full(name)}
        assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
        pdb = the(app_chart, "PodDisruptionBudget", full(name))["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pdb["maxUnavailable"] == 1
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert the(app_chart, "Service", full(name))["spec"]["selector"].items() <= labels.items()
        assert (
            the(app_chart, "NetworkPolicy", full(name))["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        )


def test_every_pod_is_non_root_with_a_read_only_root_and_resources() -> None:
    for variant, docs in variants():
        for workload, spec in pod_specs(docs).items():
            where = f"{variant}: {workload}"
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert spec["automountServiceAccountToken"] is False, where
            for container in spec["containers"] + spec.get("initContainers", []):
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["runAsNonRoot"] is True, where
                assert context["capabilities"] == {"drop": ["ALL"]}, where
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
                assert "memory" in container["resources"]["limits"], where


def test_images_name_a_version_never_latest() -> None:
    for variant, docs in variants():
        for workload, spec in pod_specs(docs).items():
            for container in spec["containers"]:
                image = container["image"]
                assert re.fullmatch(r"[^:@\s]+:[\w][\w.-]*", image.rsplit("/", 1)[-1]), (
                    f"{variant}: {workload}: {image}"
                )
                assert not image.endswith(":latest"), f"{variant}: {workload}: {image}"
    image = the(render(APP), "Deployment", full("auth"))["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"itsm-auth:{APP_VERSION}"
    tagged = render(APP, {"image": {"registry": "registry.example/itsm", "tag": "2026.1"}})
    assert the(tagged, "Job", f"{full('auth')}-migrate")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/itsm/itsm-auth:2026.1"
    )
    with pytest.raises(helm.HelmError, match="latest"):
        render(APP, {"image": {"tag": "latest"}})


def test_migrations_run_before_the_new_version_serves(app_chart: list[Doc]) -> None:
    for name in services.names():
        job = the(app_chart, "Job", f"{full(name)}-migrate")
        annotations = job["metadata"]["annotations"]
        # A Helm hook: Helm runs it and waits for it to succeed before it applies the release's other objects.
        assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
        spec = job["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["command"] == ["python", "-m", "itsm_shared.migrate", name]
        deployment = the(app_chart, "Deployment", full(name))["spec"]["template"]["spec"]
        assert container["image"] == deployment["containers"][0]["image"], "the version it migrates for"
        assert spec["restartPolicy"] == "Never"
        assert "serviceAccountName" not in spec, "a hook runs before the chart's ServiceAccounts exist"
        env = env_of(container)
        assert env["PG_ADMIN_USER"]["valueFrom"]["secretKeyRef"]["name"] == "itsm-postgres-superuser"
        # Its own service's role password only, under the name itsm_shared.migrate reads for that service.
        assert env[f"ITSM_DB_APP_PASSWORD_{name.upper()}"]["valueFrom"]["secretKeyRef"] == {
            "name": f"{full(name)}-db",
            "key": "password",
        }
        assert {v for v in env if v.startswith("ITSM_DB_APP_PASSWORD")} == {f"ITSM_DB_APP_PASSWORD_{name.upper()}"}
        assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "migration"
    hooks = [d for d in app_chart if "helm.sh/hook" in d["metadata"].get("annotations", {})]
    assert {d["kind"] for d in hooks} == {"Job"}, "only the migrations run before the release's objects"
