"""The itsm-data chart: the PostgreSQL (CloudNativePG) and RabbitMQ clusters, with a role and a broker user for
every service of the table."""

from __future__ import annotations

import re

import service_table as services
from k8s_charts import DATA, REPO_ROOT, Doc, full, of_kind, render, the


def test_data_clusters(data_chart: list[Doc]) -> None:
    cluster = the(data_chart, "Cluster", full("postgres"))
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["spec"]["instances"] == 3
    assert re.search(r":15\.\d+", cluster["spec"]["imageName"]), "PostgreSQL 15, as docker-compose.yml runs"
    assert cluster["spec"]["superuserSecret"] == {"name": "itsm-postgres-superuser"}
    assert cluster["spec"]["enableSuperuserAccess"] is True, "the migration Jobs connect as the superuser"
    for role, name in zip(cluster["spec"]["managed"]["roles"], services.names(), strict=True):
        assert role["passwordSecret"] == {"name": f"{full(name)}-db"}
        assert role["login"] is True and role["ensure"] == "present"
        assert "superuser" not in role and "createrole" not in role
    rabbit = the(data_chart, "RabbitmqCluster", full("rabbitmq"))
    assert rabbit["apiVersion"] == "rabbitmq.com/v1beta1"
    assert rabbit["spec"]["replicas"] == 3
    assert re.search(r":4\.\d+\.\d+-management$", rabbit["spec"]["image"]), "RabbitMQ 4, as docker-compose.yml runs"
    config = rabbit["spec"]["rabbitmq"]["additionalConfig"]
    compose_conf = (REPO_ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf").read_text()
    settings = [line.strip() for line in compose_conf.splitlines() if line.strip() and not line.startswith("#")]
    assert settings and all(setting in config.splitlines() for setting in settings)
    for name in services.names():
        user = the(data_chart, "User", full(name))["spec"]
        assert user["importCredentialsSecret"] == {"name": f"{full(name)}-amqp"}
        assert user["rabbitmqClusterReference"] == {"name": full("rabbitmq")}
        assert the(data_chart, "Permission", full(name))["spec"]["userReference"] == {"name": full(name)}
    assert not of_kind(render(DATA, {"rabbitmq": {"users": False}}), "User")
